//! A selector syntax error, located by character column so that callers can point into the
//! original text (the resource loader adds the column to the YAML scalar's position).

use std::fmt;

/// Why a selector text was rejected, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// 1-based character (not byte) column in the selector text where parsing went wrong; one past
    /// the last character when the text ended too early.
    pub column: usize,
    /// What was expected and what was found instead.
    pub message: String,
}

impl SelectorError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> SelectorError {
        SelectorError { column, message: message.into() }
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for SelectorError {}

/// The most characters of a selector (or of a token in a message about it) an error repeats.
pub const EXCERPT_CHARS: usize = 80;

/// `text` as an error repeats it: whole when short, else the [`EXCERPT_CHARS`] characters around 1-based
/// character `column`, with an ellipsis where text was left out (a 100 KB selector is not echoed back).
pub fn excerpt(text: &str, column: usize) -> String {
    let len = text.chars().count();
    if len <= EXCERPT_CHARS {
        return text.to_string();
    }
    let half = EXCERPT_CHARS / 2;
    let start = column.saturating_sub(1).saturating_sub(half).min(len - EXCERPT_CHARS);
    let mut out = String::with_capacity(EXCERPT_CHARS * 4 + 6);
    if start > 0 {
        out.push('…');
    }
    out.extend(text.chars().skip(start).take(EXCERPT_CHARS));
    if start + EXCERPT_CHARS < len {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_selectors_are_cut_around_the_error_with_an_ellipsis() {
        assert_eq!(excerpt("a == 'b'", 3), "a == 'b'");
        let long = format!("{} && {}", "x".repeat(100_000), "!!!");
        let e = excerpt(&long, 100_005);
        assert!(e.starts_with('…') && !e.ends_with('…') && e.ends_with("!!!"), "{e}");
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        let e = excerpt(&long, 1);
        assert!(!e.starts_with('…') && e.ends_with('…'));
        let e = excerpt(&long, 50_000);
        assert!(e.starts_with('…') && e.ends_with('…') && e.chars().count() == EXCERPT_CHARS + 2);
    }

    // semantics §5.1: errors carry a 1-based column and render as "column N: message"
    #[test]
    fn display_puts_the_column_first() {
        let e = SelectorError::new(9, "expected a quoted string after '==' but found label 'b'");
        assert_eq!(e.to_string(), "column 9: expected a quoted string after '==' but found label 'b'");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().starts_with("column 9"));
    }
}
