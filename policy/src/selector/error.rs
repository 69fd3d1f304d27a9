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

#[cfg(test)]
mod tests {
    use super::*;

    // semantics §5.1: errors carry a 1-based column and render as "column N: message"
    #[test]
    fn display_puts_the_column_first() {
        let e = SelectorError::new(9, "expected a quoted string after '==' but found label 'b'");
        assert_eq!(e.to_string(), "column 9: expected a quoted string after '==' but found label 'b'");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().starts_with("column 9"));
    }
}
