//! The host side of the multi-tensor launches (apex's multi_tensor_apply;
//! kernels/common.cuh's `MPC_CHUNK`): one launch of
//! `multi_unscale_found_inf_<t>`, `multi_adam_<t>_<s>`, `multi_sgd_<t>`,
//! `multi_sgd_momentum_<t>` or `multi_select_<t>` runs over every tensor of a group, each block
//! over one chunk of one tensor, described by two device tables packed
//! here as pure functions: the tensors (a fixed number of u64 words each:
//! the element count, the pointers, per-tensor values as bits) and the
//! chunks (per block: the tensor and its first element).

/// Elements per block: apex's chunk size (2048 · 32), enough work per
/// block to hide the table reads, small enough that a few tensors fill
/// the GPU.
pub const CHUNK: u64 = 65536;

/// The most blocks of a 1-D grid (`gridDim.x` < 2^31).
pub const MAX_BLOCKS: u64 = (1 << 31) - 1;

/// One tensor of a multi-tensor launch: its element count, its device
/// addresses in the kernel's order, and per-tensor values (as u64 bits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub n: u64,
    pub ptrs: Vec<u64>,
    pub extra: Vec<u64>,
}

/// The two tables of a launch, and its grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// Per tensor `words` words: n, the pointers, the extra values.
    pub tensors: Vec<u64>,
    /// Per block: (tensor, first element).
    pub chunks: Vec<i64>,
    /// Blocks to launch: one per chunk (0: nothing to do, launch nothing).
    pub blocks: u32,
    pub words: usize,
}

/// Packs `members` into the tables of a launch with `chunk` elements per
/// block. Empty tensors get no block; every other element is in exactly
/// one chunk. Refused: members of different layouts, a count or start
/// beyond i64, more blocks than a grid has.
pub fn pack(members: &[Member], chunk: u64) -> Result<Tables, String> {
    if chunk == 0 {
        return Err("a multi-tensor chunk must hold at least one element".into());
    }
    let words = members.first().map_or(1, |m| 1 + m.ptrs.len() + m.extra.len());
    let mut tensors = Vec::with_capacity(words * members.len());
    let mut chunks = Vec::new();
    for (t, m) in members.iter().enumerate() {
        if 1 + m.ptrs.len() + m.extra.len() != words {
            return Err(format!(
                "tensor {t} of a multi-tensor launch has {} words, the first {words}",
                1 + m.ptrs.len() + m.extra.len()
            ));
        }
        let n = i64::try_from(m.n).map_err(|_| format!("tensor {t} has {} elements, beyond a 64-bit index", m.n))?;
        let count = m.n.div_ceil(chunk);
        if chunks.len() as u64 / 2 + count > MAX_BLOCKS {
            return Err(format!(
                "a multi-tensor launch of {} tensors needs more than {MAX_BLOCKS} blocks of {chunk} elements",
                members.len()
            ));
        }
        tensors.push(n as u64);
        tensors.extend(&m.ptrs);
        tensors.extend(&m.extra);
        for c in 0..count {
            // c · chunk < n ≤ i64::MAX.
            chunks.extend([t as i64, (c * chunk) as i64]);
        }
    }
    let blocks = u32::try_from(chunks.len() / 2).map_err(|_| "too many blocks".to_string())?;
    Ok(Tables { tensors, chunks, blocks, words })
}

/// Words as the device stores them (little-endian).
pub fn bytes_of(words: impl IntoIterator<Item = u64>) -> Vec<u8> {
    words.into_iter().flat_map(u64::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u64) -> Member {
        Member { n, ptrs: vec![0x1000u64.wrapping_add(n), 0x2000u64.wrapping_add(n)], extra: vec![0.5f64.to_bits()] }
    }

    /// Which (tensor, element) each block covers, as the kernel reads the tables.
    fn covered(t: &Tables, chunk: u64) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for b in 0..t.blocks as usize {
            let (tensor, lo) = (t.chunks[2 * b] as usize, t.chunks[2 * b + 1] as u64);
            let n = t.tensors[tensor * t.words];
            out.extend((lo..(lo + chunk).min(n)).map(|i| (tensor, i)));
        }
        out
    }

    #[test]
    fn odd_sizes_and_empty_tensors_cover_every_element_once() {
        let sizes = [1u64, 7, 0, 16, 17, 0, 33];
        let members: Vec<Member> = sizes.iter().map(|&n| member(n)).collect();
        let t = pack(&members, 8).unwrap();
        assert_eq!(t.words, 4);
        assert_eq!(t.tensors[..4], [1, 0x1001, 0x2001, 0.5f64.to_bits()]);
        // 1, 1, 0, 2, 3, 0, 5 chunks.
        assert_eq!(t.blocks, 12);
        let want: Vec<(usize, u64)> =
            sizes.iter().enumerate().flat_map(|(k, &n)| (0..n).map(move |i| (k, i))).collect();
        assert_eq!(covered(&t, 8), want);
        assert_eq!(&t.chunks[..8], &[0, 0, 1, 0, 3, 0, 3, 8]);
    }

    #[test]
    fn nothing_to_do_is_no_block() {
        let t = pack(&[], CHUNK).unwrap();
        assert_eq!((t.blocks, t.tensors.len()), (0, 0));
        let t = pack(&[member(0), member(0)], CHUNK).unwrap();
        assert_eq!((t.blocks, t.tensors.len()), (0, 8));
    }

    #[test]
    fn beyond_two_to_the_31_elements_is_handled_and_too_many_blocks_refused() {
        let big = (1u64 << 33) + 5;
        let t = pack(&[member(3), member(big)], CHUNK).unwrap();
        assert_eq!(t.blocks as u64, 1 + big.div_ceil(CHUNK));
        let last = t.blocks as usize - 1;
        assert_eq!((t.chunks[2 * last], t.chunks[2 * last + 1]), (1, 1i64 << 33));
        assert_eq!(t.tensors[4], big);
        let e = pack(&[member(1 << 31)], 1).unwrap_err();
        assert!(e.contains("more than 2147483647 blocks of 1 elements"), "{e}");
        assert!(pack(&[member(u64::MAX)], CHUNK).unwrap_err().contains("beyond a 64-bit index"));
        assert!(pack(&[member(4)], 0).is_err());
    }

    #[test]
    fn members_of_different_layouts_are_refused() {
        let odd = Member { n: 4, ptrs: vec![1], extra: vec![] };
        let e = pack(&[member(4), odd], CHUNK).unwrap_err();
        assert_eq!(e, "tensor 1 of a multi-tensor launch has 2 words, the first 4");
        assert_eq!(bytes_of([1u64, 0x0203]), [1, 0, 0, 0, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 0, 0]);
    }
}
