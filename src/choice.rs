//! Settings a user picks by name (`--emit json`, `--loss mse`): each enum
//! lists its names and one-line help here, once, so the library needs no
//! command-line crate and the CLI builds its parsers and help from this.

/// An enum whose values a user names.
pub trait Choice: Copy + Send + Sync + 'static {
    /// Every value, in the order help lists them.
    const ALL: &'static [Self];

    /// The name a user types.
    fn name(self) -> &'static str;

    /// One line of help, or "" for none.
    fn help(self) -> &'static str {
        ""
    }

    /// The value named `s`, exactly (no case folding).
    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::emit::Emit;
    use crate::onnx::export::Bf16Mode;
    use crate::onnx::Loss;

    fn names_are_distinct_and_read_back<T: Choice + PartialEq + std::fmt::Debug>() {
        let names: Vec<&str> = T::ALL.iter().map(|c| c.name()).collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for &c in T::ALL {
            assert_eq!(T::from_name(c.name()), Some(c));
        }
        assert_eq!(T::from_name("no-such-name"), None);
    }

    #[test]
    fn every_choice_reads_its_names_back() {
        names_are_distinct_and_read_back::<Emit>();
        names_are_distinct_and_read_back::<Bf16Mode>();
        names_are_distinct_and_read_back::<Loss>();
        assert_eq!(Emit::from_name("onnx"), Some(Emit::Onnx));
        assert_eq!(Loss::from_name("cross-entropy"), Some(Loss::CrossEntropy));
    }
}
