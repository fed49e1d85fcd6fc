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

    #[derive(Copy, Clone, Debug, PartialEq)]
    enum Side {
        Left,
        Right,
    }

    impl Choice for Side {
        const ALL: &'static [Side] = &[Side::Left, Side::Right];
        fn name(self) -> &'static str {
            match self {
                Side::Left => "left",
                Side::Right => "right",
            }
        }
    }

    #[test]
    fn names_read_back_exactly() {
        assert_eq!(Side::from_name("right"), Some(Side::Right));
        assert_eq!(Side::from_name("Left"), None);
        assert_eq!(Side::Left.help(), "");
    }
}
