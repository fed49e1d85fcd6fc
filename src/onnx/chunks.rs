//! A model's protobuf encoding as a list of chunks, so that large
//! initializer data (hundreds of MB for a real model) goes from the buffer
//! it was converted into to the file without being copied into one message
//! buffer first.
//!
//! Protobuf lets a message's fields come in any order, so the graph is
//! written as its other fields followed by its initializers, each
//! initializer as its other fields followed by its `raw_data`; readers
//! (onnx, onnxruntime, prost) see the same message.

use bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use super::proto::{GraphProto, ModelProto};

/// `raw_data` of at least this many bytes is written as its own chunk.
const OWN_CHUNK: usize = 4 << 10;

const MODEL_GRAPH: u32 = 7;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_RAW_DATA: u32 = 9;

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The encoding of `m`: the concatenation of the chunks is a valid
/// serialization of the same message.
pub fn encode(mut m: ModelProto) -> Vec<Bytes> {
    let Some(mut graph) = m.graph.take() else {
        return vec![Bytes::from(m.encode_to_vec())];
    };
    let mut inits = std::mem::take(&mut graph.initializer);
    // Each initializer without its large raw_data, and that data.
    let big: Vec<Option<Bytes>> = inits
        .iter_mut()
        .map(|t| match &t.raw_data {
            Some(raw) if raw.len() >= OWN_CHUNK => t.raw_data.take(),
            _ => None,
        })
        .collect();
    let init_lens: Vec<usize> = inits
        .iter()
        .zip(&big)
        .map(|(t, raw)| t.encoded_len() + raw.as_ref().map_or(0, |r| delimited_len(TENSOR_RAW_DATA, r.len())))
        .collect();
    let graph_len = graph.encoded_len() + init_lens.iter().map(|&l| delimited_len(GRAPH_INITIALIZER, l)).sum::<usize>();

    // Everything but the large data goes into one buffer, sized exactly;
    // `splits` records where each large datum goes between its bytes.
    let total = m.encoded_len() + delimited_len(MODEL_GRAPH, graph_len);
    let outside: usize = big.iter().flatten().map(|b| b.len()).sum();
    let mut buf = Vec::with_capacity(total - outside);
    let mut splits = Vec::new();
    m.encode_raw(&mut buf);
    encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut buf);
    encode_varint(graph_len as u64, &mut buf);
    GraphProto::encode_raw(&graph, &mut buf);
    for ((t, raw), len) in inits.iter().zip(big).zip(init_lens) {
        encode_key(GRAPH_INITIALIZER, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        t.encode_raw(&mut buf);
        if let Some(raw) = raw {
            encode_key(TENSOR_RAW_DATA, WireType::LengthDelimited, &mut buf);
            encode_varint(raw.len() as u64, &mut buf);
            splits.push((buf.len(), raw));
        }
    }
    let buf = Bytes::from(buf);
    let mut chunks = Vec::with_capacity(2 * splits.len() + 1);
    let mut at = 0;
    for (end, raw) in splits {
        if end > at {
            chunks.push(buf.slice(at..end));
        }
        chunks.push(raw);
        at = end;
    }
    if buf.len() > at {
        chunks.push(buf.slice(at..));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::super::proto::{data_type, NodeProto, TensorProto};
    use super::*;

    fn tensor(name: &str, bytes: usize) -> TensorProto {
        TensorProto {
            dims: vec![(bytes / 4) as i64],
            data_type: Some(data_type::FLOAT),
            name: Some(name.into()),
            raw_data: Some(Bytes::from((0..bytes).map(|i| (i * 7) as u8).collect::<Vec<u8>>())),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_decode_to_the_same_model() {
        let graph = GraphProto {
            node: vec![NodeProto { op_type: Some("Relu".into()), input: vec!["x".into()], ..Default::default() }],
            name: Some("g".into()),
            initializer: vec![
                tensor("small", 16),
                tensor("big", OWN_CHUNK * 3),
                tensor("tiny", 4),
                tensor("b2", OWN_CHUNK),
            ],
            ..Default::default()
        };
        let m = ModelProto {
            ir_version: Some(8),
            producer_name: Some("t".into()),
            graph: Some(graph),
            ..Default::default()
        };
        let chunks = encode(m.clone());
        // The two large tensors' data are chunks of their own, not copies.
        assert_eq!(chunks.iter().filter(|c| c.len() >= OWN_CHUNK).count(), 2);
        let joined: Vec<u8> = chunks.concat();
        assert_eq!(joined.len(), m.encoded_len());
        assert_eq!(ModelProto::decode(&joined[..]).unwrap(), m);
        // No graph: one chunk.
        let bare = ModelProto { ir_version: Some(8), ..Default::default() };
        assert_eq!(encode(bare.clone()).concat(), bare.encode_to_vec());
    }
}
