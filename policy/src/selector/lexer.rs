//! Selector tokenizer (semantics §5.1).
//!
//! Calico's tokenizer is contextual: word operators (`in`, `not in`, `contains`, `starts with`,
//! `ends with`) are only recognised immediately after a label, and anywhere else a word is a label.
//! That is why keywords are not reserved (`in == "x"`, `contains contains 'x'`). The lexer tracks
//! "the previous token was a label" itself, so the parser can use it as a plain token stream.
//!
//! Positions are counted in characters, not bytes, so error columns are right for multi-byte text.

use super::error::SelectorError;

/// Longest label Calico accepts.
pub(super) const MAX_LABEL_LEN: usize = 512;

/// One token kind, with its text where it carries one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tok {
    Label(String),
    Str(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    Not,
    And,
    Or,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    Has(String),
    All,
    Global,
    /// A word right after a label that is not an operator; never valid, kept so the parser can
    /// say what it expected instead.
    Word(String),
    /// A character that starts no token; the parser reports it in context.
    Unexpected(char),
    Eof,
}

impl Tok {
    /// How the token is named in "expected X but found Y" messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Label(l) => format!("label '{}'", shorten(l)),
            Tok::Str(s) => format!("string {}", shorten(&super::display::quote(s))),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::Comma => "','".into(),
            Tok::Eq => "'=='".into(),
            Tok::Ne => "'!='".into(),
            Tok::Not => "'!'".into(),
            Tok::And => "'&&'".into(),
            Tok::Or => "'||'".into(),
            Tok::In => "'in'".into(),
            Tok::NotIn => "'not in'".into(),
            Tok::Contains => "'contains'".into(),
            Tok::StartsWith => "'starts with'".into(),
            Tok::EndsWith => "'ends with'".into(),
            Tok::Has(l) => format!("'has({})'", shorten(l)),
            Tok::All => "'all()'".into(),
            Tok::Global => "'global()'".into(),
            Tok::Word(w) => format!("'{}'", shorten(w)),
            Tok::Unexpected(c) => describe_char(Some(*c)),
            Tok::Eof => "end of selector".into(),
        }
    }
}

/// A token and the 1-based character column where it starts (one past the end for `Eof`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Token {
    pub tok: Tok,
    pub column: usize,
}

/// Calico's label alphabet: there is no prefix/name split, `/` and `.` are plain characters.
pub(super) fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Long labels and strings are cut in messages so an error stays readable.
fn shorten(s: &str) -> String {
    const KEEP: usize = 40;
    if s.chars().count() <= KEEP {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(KEEP).collect();
        out.push('…');
        out
    }
}

/// Names a character (or the end of input) for a message.
fn describe_char(c: Option<char>) -> String {
    match c {
        None => "end of selector".into(),
        Some(c) if c.is_control() => format!("control character U+{:04X}", u32::from(c)),
        Some(c) => format!("'{c}'"),
    }
}

/// Turns selector text into tokens on demand.
#[derive(Debug)]
pub(super) struct Lexer {
    chars: Vec<char>,
    pos: usize,
    /// The previous token was a label, so a word here must be an operator.
    after_label: bool,
}

impl Lexer {
    pub(super) fn new(text: &str) -> Lexer {
        Lexer { chars: text.chars().collect(), pos: 0, after_label: false }
    }

    fn peek_char(&self, at: usize) -> Option<char> {
        self.chars.get(at).copied()
    }

    fn err(&self, at: usize, message: impl Into<String>) -> SelectorError {
        SelectorError::new(at + 1, message)
    }

    /// Skips spaces and tabs; any other control character is an error (semantics §5.1: a selector
    /// spanning several lines is invalid).
    fn skip_ws(&mut self) -> Result<(), SelectorError> {
        while let Some(c) = self.peek_char(self.pos) {
            if c == ' ' || c == '\t' {
                self.pos += 1;
            } else if c.is_control() {
                return Err(self.err(
                    self.pos,
                    format!(
                        "expected a space, tab or token but found {} (a selector must be on one line)",
                        describe_char(Some(c))
                    ),
                ));
            } else {
                break;
            }
        }
        Ok(())
    }

    /// Like `skip_ws` but only spaces and tabs and never an error: used inside two-word operators,
    /// where a failed match simply means "not this operator".
    fn skip_blanks_from(&self, mut at: usize) -> usize {
        while matches!(self.peek_char(at), Some(' ' | '\t')) {
            at += 1;
        }
        at
    }

    /// End of the run of label characters starting at `at`.
    fn label_end(&self, mut at: usize) -> usize {
        while self.peek_char(at).is_some_and(is_label_char) {
            at += 1;
        }
        at
    }

    /// `word` is at `at` (no boundary check); returns the position after it.
    fn literal_at(&self, at: usize, word: &str) -> Option<usize> {
        let mut p = at;
        for w in word.chars() {
            if self.peek_char(p) != Some(w) {
                return None;
            }
            p += 1;
        }
        Some(p)
    }

    /// `word` is at `at` and followed by a word boundary (semantics §5.1: `a inx {}` is not `in`).
    fn word_at(&self, at: usize, word: &str) -> Option<usize> {
        self.literal_at(at, word).filter(|&end| !self.peek_char(end).is_some_and(is_label_char))
    }

    /// `first` blanks* `second`, boundary after `second` (`not in`, `notin`, `not \t in`).
    fn two_words_at(&self, at: usize, first: &str, second: &str) -> Option<usize> {
        let mid = self.literal_at(at, first)?;
        self.word_at(self.skip_blanks_from(mid), second)
    }

    /// Produces the next token, or an error for text that can never be part of a selector.
    pub(super) fn next_token(&mut self) -> Result<Token, SelectorError> {
        self.skip_ws()?;
        let after_label = std::mem::take(&mut self.after_label);
        let start = self.pos;
        let column = start + 1;
        let Some(c) = self.peek_char(start) else {
            return Ok(Token { tok: Tok::Eof, column });
        };
        let next = self.peek_char(start + 1);
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '{' => (Tok::LBrace, 1),
            '}' => (Tok::RBrace, 1),
            ',' => (Tok::Comma, 1),
            '"' | '\'' => return self.string(c),
            '=' if next == Some('=') => (Tok::Eq, 2),
            '=' => {
                return Err(self
                    .err(start, format!("expected '==' but found a single '=' followed by {}", describe_char(next))))
            }
            '!' if next == Some('=') => (Tok::Ne, 2),
            '!' => (Tok::Not, 1),
            '&' if next == Some('&') => (Tok::And, 2),
            '&' => {
                return Err(self
                    .err(start, format!("expected '&&' but found a single '&' followed by {}", describe_char(next))))
            }
            '|' if next == Some('|') => (Tok::Or, 2),
            '|' => {
                return Err(self
                    .err(start, format!("expected '||' but found a single '|' followed by {}", describe_char(next))))
            }
            c if is_label_char(c) && after_label => return Ok(self.operator_word()),
            c if is_label_char(c) => return self.label_or_function(),
            c => (Tok::Unexpected(c), 1),
        };
        self.pos += len;
        Ok(Token { tok, column })
    }

    /// A quoted string: runs to the next identical quote, no escapes (semantics §5.1). Anything,
    /// including control characters, may be inside (as in Calico).
    fn string(&mut self, quote: char) -> Result<Token, SelectorError> {
        let start = self.pos;
        let body = start + 1;
        let Some(len) = self.chars[body..].iter().position(|&c| c == quote) else {
            return Err(
                self.err(start, format!("unterminated string: expected a closing {quote} but found end of selector"))
            );
        };
        let value: String = self.chars[body..body + len].iter().collect();
        self.pos = body + len + 1;
        Ok(Token { tok: Tok::Str(value), column: start + 1 })
    }

    /// After a label, a word must be one of the word operators.
    fn operator_word(&mut self) -> Token {
        let start = self.pos;
        let found = self
            .word_at(start, "contains")
            .map(|e| (Tok::Contains, e))
            .or_else(|| self.two_words_at(start, "starts", "with").map(|e| (Tok::StartsWith, e)))
            .or_else(|| self.two_words_at(start, "ends", "with").map(|e| (Tok::EndsWith, e)))
            .or_else(|| self.two_words_at(start, "not", "in").map(|e| (Tok::NotIn, e)))
            .or_else(|| self.word_at(start, "in").map(|e| (Tok::In, e)));
        let (tok, end) = found.unwrap_or_else(|| {
            let end = self.label_end(start);
            (Tok::Word(self.chars[start..end].iter().collect()), end)
        });
        self.pos = end;
        Token { tok, column: start + 1 }
    }

    /// A label, or `has(label)`, `all()`, `global()` when the name is directly followed by `(`.
    fn label_or_function(&mut self) -> Result<Token, SelectorError> {
        let start = self.pos;
        let end = self.label_end(start);
        let word: String = self.chars[start..end].iter().collect();
        if end - start > MAX_LABEL_LEN {
            return Err(self.err(
                start,
                format!("expected a label of at most {MAX_LABEL_LEN} characters but found one of {}", end - start),
            ));
        }
        let column = start + 1;
        if self.peek_char(end) == Some('(') {
            self.pos = end + 1;
            match word.as_str() {
                "has" => {
                    let label = self.label_in_has()?;
                    return Ok(Token { tok: Tok::Has(label), column });
                }
                "all" => {
                    self.close_paren("all(")?;
                    return Ok(Token { tok: Tok::All, column });
                }
                "global" => {
                    self.close_paren("global(")?;
                    return Ok(Token { tok: Tok::Global, column });
                }
                // Any other `name(` is a label followed by `(`, which the parser rejects.
                _ => {}
            }
        }
        self.pos = end;
        self.after_label = true;
        Ok(Token { tok: Tok::Label(word), column })
    }

    /// The inside of `has(`: optional blanks, a label, optional blanks, `)`.
    fn label_in_has(&mut self) -> Result<String, SelectorError> {
        self.skip_ws()?;
        let start = self.pos;
        let end = self.label_end(start);
        if end == start {
            return Err(self.err(
                start,
                format!("expected a label inside 'has(' but found {}", describe_char(self.peek_char(start))),
            ));
        }
        if end - start > MAX_LABEL_LEN {
            return Err(self.err(
                start,
                format!("expected a label of at most {MAX_LABEL_LEN} characters but found one of {}", end - start),
            ));
        }
        let label = self.chars[start..end].iter().collect();
        self.pos = end;
        self.close_paren("has(")?;
        Ok(label)
    }

    /// Optional blanks then the `)` closing a function call.
    fn close_paren(&mut self, opened: &str) -> Result<(), SelectorError> {
        self.skip_ws()?;
        match self.peek_char(self.pos) {
            Some(')') => {
                self.pos += 1;
                Ok(())
            }
            other => {
                Err(self.err(self.pos, format!("expected ')' to close '{opened}' but found {}", describe_char(other))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Result<Vec<(Tok, usize)>, SelectorError> {
        let mut lx = Lexer::new(text);
        let mut out = Vec::new();
        loop {
            let t = lx.next_token()?;
            let done = t.tok == Tok::Eof;
            out.push((t.tok, t.column));
            if done {
                return Ok(out);
            }
        }
    }

    fn kinds(text: &str) -> Vec<Tok> {
        match toks(text) {
            Ok(v) => v.into_iter().map(|(t, _)| t).collect(),
            Err(e) => panic!("{text:?} failed to lex: {e}"),
        }
    }

    fn lex_err(text: &str) -> SelectorError {
        match toks(text) {
            Ok(v) => panic!("{text:?} lexed to {v:?}"),
            Err(e) => e,
        }
    }

    fn label(s: &str) -> Tok {
        Tok::Label(s.into())
    }

    fn string(s: &str) -> Tok {
        Tok::Str(s.into())
    }

    // semantics §5.1: punctuation operators and their columns
    #[test]
    fn punctuation() {
        let got = toks("a==\"b\"&&!(c!='d')||e in{'x',}").unwrap_or_default();
        let want = vec![
            (label("a"), 1),
            (Tok::Eq, 2),
            (string("b"), 4),
            (Tok::And, 7),
            (Tok::Not, 9),
            (Tok::LParen, 10),
            (label("c"), 11),
            (Tok::Ne, 12),
            (string("d"), 14),
            (Tok::RParen, 17),
            (Tok::Or, 18),
            (label("e"), 20),
            (Tok::In, 22),
            (Tok::LBrace, 24),
            (string("x"), 25),
            (Tok::Comma, 28),
            (Tok::RBrace, 29),
            (Tok::Eof, 30),
        ];
        assert_eq!(got, want);
    }

    // semantics §5.1: whitespace is space and TAB only; other control characters are errors
    #[test]
    fn whitespace() {
        assert_eq!(kinds(" \t a \t== \t'b'\t "), vec![label("a"), Tok::Eq, string("b"), Tok::Eof]);
        assert_eq!(kinds(""), vec![Tok::Eof]);
        for (text, col) in [("a == 'b'\n", 9), ("\ra", 1), ("a\u{b}== 'b'", 2), ("has(\na)", 5), ("a ==\u{85}'b'", 5)] {
            let e = lex_err(text);
            assert_eq!(e.column, col, "{text:?}: {e}");
            assert!(e.message.contains("control character"), "{e}");
        }
    }

    // semantics §5.1: label alphabet A-Z a-z 0-9 _ . / - , one token, 1..512 characters
    #[test]
    fn labels() {
        assert_eq!(
            kinds("projectcalico.org/namespace == 'x'"),
            vec![label("projectcalico.org/namespace"), Tok::Eq, string("x"), Tok::Eof]
        );
        assert_eq!(kinds("_-./09Az"), vec![label("_-./09Az"), Tok::Eof]);
        let max = "a".repeat(MAX_LABEL_LEN);
        assert_eq!(kinds(&max), vec![label(&max), Tok::Eof]);
        let e = lex_err(&format!("x == 'y' && {}", "b".repeat(MAX_LABEL_LEN + 1)));
        assert_eq!(e.column, 13);
        assert!(e.message.contains("at most 512") && e.message.contains("513"), "{e}");
        let e = lex_err(&format!("has({})", "b".repeat(600)));
        assert_eq!(e.column, 5);
    }

    // semantics §5.1: strings run to the next identical quote, no escapes
    #[test]
    fn strings() {
        assert_eq!(kinds(r#"'a"b'"#), vec![string("a\"b"), Tok::Eof]);
        assert_eq!(kinds(r#""a'b""#), vec![string("a'b"), Tok::Eof]);
        assert_eq!(kinds(r#""a\"b"#), vec![string("a\\"), label("b"), Tok::Eof]);
        assert_eq!(kinds("''"), vec![string(""), Tok::Eof]);
        assert_eq!(kinds("'é ü 🦀'"), vec![string("é ü 🦀"), Tok::Eof]);
        let e = lex_err("label == \"value");
        assert_eq!(e.column, 10);
        assert!(e.message.contains("unterminated") && e.message.contains("end of selector"), "{e}");
        assert_eq!(lex_err("é == 'ab").column, 6);
    }

    // semantics §5.1: word operators only right after a label, two-word forms with any blanks or none
    #[test]
    fn word_operators() {
        for (text, op) in [
            ("a in {}", Tok::In),
            ("a not in {}", Tok::NotIn),
            ("a notin {}", Tok::NotIn),
            ("a not \t  in {}", Tok::NotIn),
            ("a contains 'x'", Tok::Contains),
            ("a starts with 'x'", Tok::StartsWith),
            ("a startswith 'x'", Tok::StartsWith),
            ("a starts\twith 'x'", Tok::StartsWith),
            ("a ends with 'x'", Tok::EndsWith),
            ("a endswith 'x'", Tok::EndsWith),
        ] {
            assert_eq!(kinds(text)[1], op, "{text}");
        }
        assert_eq!(kinds("a in{'x'}")[1..3], [Tok::In, Tok::LBrace]);
        assert_eq!(kinds("a contains'x'")[1..3], [Tok::Contains, string("x")]);
        // No word boundary, wrong case or a missing second word: not an operator.
        for (text, word) in [
            ("a inx {}", "inx"),
            ("a in.x {}", "in.x"),
            ("a IN {}", "IN"),
            ("a not {}", "not"),
            ("a starts 'x'", "starts"),
            ("a startswithx 'x'", "startswithx"),
            ("a containsx 'x'", "containsx"),
            ("a b", "b"),
        ] {
            assert_eq!(kinds(text)[1], Tok::Word(word.into()), "{text}");
        }
    }

    // semantics §5.1: keywords are not reserved as label names
    #[test]
    fn keywords_as_labels() {
        assert_eq!(kinds("contains contains 'x'"), vec![label("contains"), Tok::Contains, string("x"), Tok::Eof]);
        assert_eq!(kinds("in == 'x'"), vec![label("in"), Tok::Eq, string("x"), Tok::Eof]);
        assert_eq!(kinds("not in {}"), vec![label("not"), Tok::In, Tok::LBrace, Tok::RBrace, Tok::Eof]);
        assert_eq!(kinds("has == 'x'")[0], label("has"));
        assert_eq!(kinds("all in {}")[0], label("all"));
        assert_eq!(kinds("global != ''")[0], label("global"));
        // `in` after an operator is a label again.
        assert_eq!(kinds("a == in")[2], label("in"));
    }

    // semantics §5.1: has(/all(/global( need the parenthesis right after the name; blanks inside are fine
    #[test]
    fn functions() {
        assert_eq!(kinds("has(a)"), vec![Tok::Has("a".into()), Tok::Eof]);
        assert_eq!(kinds("has( \tp.q/r \t)"), vec![Tok::Has("p.q/r".into()), Tok::Eof]);
        assert_eq!(kinds("all()"), vec![Tok::All, Tok::Eof]);
        assert_eq!(kinds("all( \t)"), vec![Tok::All, Tok::Eof]);
        assert_eq!(kinds("global( )"), vec![Tok::Global, Tok::Eof]);
        // A space before `(` makes the name a label, followed by `(`.
        assert_eq!(kinds("has (a)")[..2], [label("has"), Tok::LParen]);
        assert_eq!(kinds("hasx(a)")[..2], [label("hasx"), Tok::LParen]);
        for (text, col, what) in [
            ("has()", 5, "expected a label inside 'has(' but found ')'"),
            ("has(a b)", 7, "expected ')' to close 'has(' but found 'b'"),
            ("has(a", 6, "expected ')' to close 'has(' but found end of selector"),
            ("has(", 5, "expected a label inside 'has(' but found end of selector"),
            ("has('a')", 5, "expected a label inside 'has(' but found '''"),
            ("all(x)", 5, "expected ')' to close 'all(' but found 'x'"),
            ("global(", 8, "expected ')' to close 'global(' but found end of selector"),
        ] {
            let e = lex_err(text);
            assert_eq!((e.column, e.message.as_str()), (col, what), "{text}");
        }
    }

    // semantics §5.1: single `=`, `&`, `|` are errors; unknown characters become tokens for the parser
    #[test]
    fn bad_characters() {
        for (text, col, what) in [
            ("a = 'b'", 3, "expected '==' but found a single '=' followed by ' '"),
            ("a == 'b' & c", 10, "expected '&&' but found a single '&' followed by ' '"),
            ("a == 'b' |", 10, "expected '||' but found a single '|' followed by end of selector"),
        ] {
            let e = lex_err(text);
            assert_eq!((e.column, e.message.as_str()), (col, what), "{text}");
        }
        assert_eq!(toks("é%").unwrap_or_default()[0], (Tok::Unexpected('é'), 1));
        assert_eq!(toks("  %").unwrap_or_default()[0], (Tok::Unexpected('%'), 3));
    }
}
