//! Recursive-descent parser for the selector grammar (semantics §5.2):
//!
//! ```text
//! selector := <empty> | orExpr
//! orExpr   := andExpr ( "||" andExpr )*
//! andExpr  := unary ( "&&" unary )*
//! unary    := "!"* primary
//! primary  := "(" orExpr ")" | has(label) | all() | global()
//!           | label ("==" | "!=" | "contains" | "starts with" | "ends with") string
//!           | label ("in" | "not in") "{" [ string ("," string)* [","] ] "}"
//! ```
//!
//! The tree keeps the shape Calico builds: `a && b && c` is one `And` of three, but parentheses
//! start a new group, so `(a && b) && c` stays nested. That keeps the canonical text equal to
//! Felix's.

use std::collections::BTreeSet;

use super::error::SelectorError;
use super::lexer::{Lexer, Tok, Token};
use super::Expr;

/// Deepest parenthesis nesting accepted. Calico has no limit, but recursion here (and in every
/// walk over the tree) uses the thread's stack, and a hostile selector must give an error, not
/// a stack overflow. Real selectors nest a handful of levels.
pub(super) const MAX_NESTING: usize = 256;

/// What may start a primary, for messages.
const PRIMARY: &str = "a label, '!', '(', has(<label>), all() or global()";

/// Parses a whole selector; empty or blank text is `all()`.
pub(super) fn parse(text: &str) -> Result<Expr, SelectorError> {
    let mut lexer = Lexer::new(text);
    let tok = lexer.next_token()?;
    let mut p = Parser { lexer, tok, depth: 0 };
    if p.tok.tok == Tok::Eof {
        return Ok(Expr::All);
    }
    let e = p.or_expr()?;
    if p.tok.tok != Tok::Eof {
        return Err(p.unexpected("'&&', '||' or the end of the selector"));
    }
    Ok(e)
}

struct Parser {
    lexer: Lexer,
    /// The current (not yet consumed) token.
    tok: Token,
    /// Open parentheses around the current position.
    depth: usize,
}

impl Parser {
    /// Consumes the current token and returns it.
    fn advance(&mut self) -> Result<Token, SelectorError> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    /// "expected `what` but found <current token>", at the current token.
    fn unexpected(&self, what: &str) -> SelectorError {
        SelectorError::new(self.tok.column, format!("expected {what} but found {}", self.tok.tok.describe()))
    }

    fn or_expr(&mut self) -> Result<Expr, SelectorError> {
        let first = self.and_expr()?;
        if self.tok.tok != Tok::Or {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.tok.tok == Tok::Or {
            self.advance()?;
            terms.push(self.and_expr()?);
        }
        Ok(Expr::Or(terms))
    }

    fn and_expr(&mut self) -> Result<Expr, SelectorError> {
        let first = self.unary()?;
        if self.tok.tok != Tok::And {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.tok.tok == Tok::And {
            self.advance()?;
            terms.push(self.unary()?);
        }
        Ok(Expr::And(terms))
    }

    /// Any number of `!`, collapsed by parity as Calico does (`!!a` is `a`).
    fn unary(&mut self) -> Result<Expr, SelectorError> {
        let mut negated = false;
        let mut any_bang = false;
        while self.tok.tok == Tok::Not {
            any_bang = true;
            negated = !negated;
            self.advance()?;
        }
        let e = self.primary(any_bang)?;
        Ok(if negated { Expr::Not(Box::new(e)) } else { e })
    }

    /// `after_bang`: a `!` came just before, which words the error when nothing usable follows.
    fn primary(&mut self, after_bang: bool) -> Result<Expr, SelectorError> {
        let start = self.advance()?;
        match start.tok {
            Tok::LParen => self.group(start.column),
            Tok::Has(label) => Ok(Expr::Has(label)),
            Tok::All => Ok(Expr::All),
            Tok::Global => Ok(Expr::Global),
            Tok::Label(label) => self.comparison(label),
            other => {
                let after = if after_bang { " after '!'" } else { "" };
                let hint = match other {
                    Tok::Str(_) => " (the label must be on the left, unquoted)",
                    Tok::RParen => " (empty parentheses are not an expression)",
                    _ => "",
                };
                Err(SelectorError::new(
                    start.column,
                    format!("expected {PRIMARY}{after} but found {}{hint}", other.describe()),
                ))
            }
        }
    }

    /// After `(`: an expression and its `)`.
    fn group(&mut self, open_column: usize) -> Result<Expr, SelectorError> {
        if self.depth >= MAX_NESTING {
            return Err(SelectorError::new(
                open_column,
                format!("expected at most {MAX_NESTING} levels of nested parentheses but found more"),
            ));
        }
        self.depth += 1;
        let e = self.or_expr()?;
        self.depth -= 1;
        if self.tok.tok != Tok::RParen {
            return Err(self.unexpected(&format!("'&&', '||' or ')' to close the '(' at column {open_column}")));
        }
        self.advance()?;
        Ok(e)
    }

    /// After a label: an operator and its operand.
    fn comparison(&mut self, label: String) -> Result<Expr, SelectorError> {
        let op = self.tok.tok.clone();
        let build: fn(String, String) -> Expr = match op {
            Tok::Eq => Expr::Eq,
            Tok::Ne => Expr::Ne,
            Tok::Contains => Expr::Contains,
            Tok::StartsWith => Expr::StartsWith,
            Tok::EndsWith => Expr::EndsWith,
            Tok::In | Tok::NotIn => {
                self.advance()?;
                let set = self.set_literal(&op)?;
                return Ok(if op == Tok::In { Expr::In(label, set) } else { Expr::NotIn(label, set) });
            }
            _ => {
                let mut message = format!(
                    "expected an operator (==, !=, in, not in, contains, starts with, ends with) after label '{}'",
                    label.chars().take(40).collect::<String>()
                );
                if matches!(label.as_str(), "has" | "all" | "global") && self.tok.tok == Tok::LParen {
                    message = format!("{message}; write '{label}(' with no space before '('");
                }
                return Err(SelectorError::new(
                    self.tok.column,
                    format!("{message} but found {}", self.tok.tok.describe()),
                ));
            }
        };
        self.advance()?;
        let value = self.string_after(&op)?;
        Ok(build(label, value))
    }

    /// Consumes the current token if it is a quoted string and returns its value.
    fn take_string(&mut self) -> Result<Option<String>, SelectorError> {
        if !matches!(self.tok.tok, Tok::Str(_)) {
            return Ok(None);
        }
        match self.advance()?.tok {
            Tok::Str(s) => Ok(Some(s)),
            _ => Ok(None),
        }
    }

    /// The quoted string operand of a comparison; a label there is a (rejected) label-vs-label test.
    fn string_after(&mut self, op: &Tok) -> Result<String, SelectorError> {
        match self.take_string()? {
            Some(s) => Ok(s),
            None => Err(self.unexpected(&format!("a quoted string after {}", op.describe()))),
        }
    }

    /// `{` [ string ("," string)* [","] ] `}` after `in` / `not in`.
    fn set_literal(&mut self, op: &Tok) -> Result<BTreeSet<String>, SelectorError> {
        if self.tok.tok != Tok::LBrace {
            return Err(self.unexpected(&format!("'{{' to start a set after {}", op.describe())));
        }
        let open_column = self.advance()?.column;
        let mut set = BTreeSet::new();
        loop {
            // Element position: a string, or `}` (empty set, or after a trailing comma).
            if self.tok.tok == Tok::RBrace {
                self.advance()?;
                return Ok(set);
            }
            match self.take_string()? {
                Some(s) => {
                    set.insert(s);
                }
                None => {
                    return Err(
                        self.unexpected(&format!("a quoted string or '}}' in the set opened at column {open_column}"))
                    )
                }
            }
            // After a string: `,` or `}`; two strings without a comma are an error.
            match self.tok.tok {
                Tok::Comma => {
                    self.advance()?;
                }
                Tok::RBrace => {
                    self.advance()?;
                    return Ok(set);
                }
                _ => return Err(self.unexpected(&format!("',' or '}}' in the set opened at column {open_column}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn tree(text: &str) -> Expr {
        match parse(text) {
            Ok(e) => e,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    fn error(text: &str) -> SelectorError {
        match parse(text) {
            Ok(e) => panic!("{text:?} parsed as {e:?}"),
            Err(e) => e,
        }
    }

    fn eq(k: &str, v: &str) -> Expr {
        Expr::Eq(k.into(), v.into())
    }

    fn has(k: &str) -> Expr {
        Expr::Has(k.into())
    }

    fn not(e: Expr) -> Expr {
        Expr::Not(Box::new(e))
    }

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    // semantics §5.2: empty or blank selector is all()
    #[test]
    fn empty_is_all() {
        assert_eq!(tree(""), Expr::All);
        assert_eq!(tree(" \t  "), Expr::All);
        assert_eq!(tree("all()"), Expr::All);
    }

    // semantics §5.2: every primary
    #[test]
    fn primaries() {
        for (text, want) in [
            ("has(a)", has("a")),
            ("global()", Expr::Global),
            ("a == 'b'", eq("a", "b")),
            ("a != 'b'", Expr::Ne("a".into(), "b".into())),
            ("a contains 'b'", Expr::Contains("a".into(), "b".into())),
            ("a starts with 'b'", Expr::StartsWith("a".into(), "b".into())),
            ("a ends with 'b'", Expr::EndsWith("a".into(), "b".into())),
            ("a in {'x', 'y'}", Expr::In("a".into(), set(&["x", "y"]))),
            ("a not in {'x'}", Expr::NotIn("a".into(), set(&["x"]))),
            ("a in {}", Expr::In("a".into(), set(&[]))),
            ("a in { }", Expr::In("a".into(), set(&[]))),
            ("a in {'x',}", Expr::In("a".into(), set(&["x"]))),
            ("a in {'x','x' , \"y\" ,}", Expr::In("a".into(), set(&["x", "y"]))),
            ("a in{\"x\"}", Expr::In("a".into(), set(&["x"]))),
            ("contains contains 'x'", Expr::Contains("contains".into(), "x".into())),
            ("in == \"x\"", eq("in", "x")),
            ("not not in {}", Expr::NotIn("not".into(), set(&[]))),
            ("has in {'a'}", Expr::In("has".into(), set(&["a"]))),
            ("(a == 'b')", eq("a", "b")),
            ("( ( has(a) ) )", has("a")),
        ] {
            assert_eq!(tree(text), want, "{text}");
        }
    }

    // semantics §5.2: precedence ! > && > ||, and ! applies to the following primary only
    #[test]
    fn precedence() {
        let (a, b, c) = (eq("a", "1"), eq("b", "2"), eq("c", "3"));
        assert_eq!(
            tree("a == '1' || b == '2' && c == '3'"),
            Expr::Or(vec![a.clone(), Expr::And(vec![b.clone(), c.clone()])])
        );
        assert_eq!(
            tree("a == '1' && b == '2' || c == '3'"),
            Expr::Or(vec![Expr::And(vec![a.clone(), b.clone()]), c.clone()])
        );
        assert_eq!(tree("!a == '1' && b == '2'"), Expr::And(vec![not(a.clone()), b.clone()]));
        assert_eq!(tree("!(a == '1' && b == '2')"), not(Expr::And(vec![a.clone(), b.clone()])));
        assert_eq!(
            tree("(a == '1' || b == '2') && c == '3'"),
            Expr::And(vec![Expr::Or(vec![a.clone(), b.clone()]), c.clone()])
        );
    }

    // semantics §5.2: chains of one operator are one n-ary node; parentheses start a new group
    #[test]
    fn associativity() {
        let (a, b, c) = (has("a"), has("b"), has("c"));
        assert_eq!(tree("has(a) && has(b) && has(c)"), Expr::And(vec![a.clone(), b.clone(), c.clone()]));
        assert_eq!(tree("has(a) || has(b) || has(c)"), Expr::Or(vec![a.clone(), b.clone(), c.clone()]));
        assert_eq!(
            tree("(has(a) && has(b)) && has(c)"),
            Expr::And(vec![Expr::And(vec![a.clone(), b.clone()]), c.clone()])
        );
        assert_eq!(
            tree("has(a) || (has(b) || has(c))"),
            Expr::Or(vec![a.clone(), Expr::Or(vec![b.clone(), c.clone()])])
        );
    }

    // semantics §5.2: any number of ! collapses by parity
    #[test]
    fn repeated_not() {
        assert_eq!(tree("!has(a)"), not(has("a")));
        assert_eq!(tree("!!has(a)"), has("a"));
        assert_eq!(tree("! ! !has(a)"), not(has("a")));
        assert_eq!(tree("!!!!has(a)"), has("a"));
        assert_eq!(tree("!(!has(a))"), not(not(has("a"))));
    }

    // semantics §5.1: blanks are optional between tokens and free inside parentheses
    #[test]
    fn whitespace_is_insignificant() {
        let want = tree("a == 'b' && (c in {'d'} || !has(e))");
        for text in [
            "a=='b'&&(c in{'d'}||!has(e))",
            "\ta == 'b'  &&\t( c  in  { 'd' }  ||  ! has( e ) ) \t",
            "a ==\"b\"&&(c in{\"d\",}||!has(e))",
        ] {
            assert_eq!(tree(text), want, "{text}");
        }
    }

    // semantics §5.1/§5.2: every error class, with the column where it went wrong
    #[test]
    fn errors() {
        let long = "x".repeat(513);
        let long_sel = format!("{long} == 'v'");
        let deep_ok = format!("{}has(a){}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        let deep_bad = format!("{}has(a){}", "(".repeat(MAX_NESTING + 1), ")".repeat(MAX_NESTING + 1));
        assert_eq!(tree(&deep_ok), has("a"));
        let cases: Vec<(&str, usize, &str)> = vec![
            // A label on its own, or followed by a non-operator.
            ("b", 2, "expected an operator (==, !=, in, not in, contains, starts with, ends with) after label 'b' but found end of selector"),
            ("a IN {'x'}", 3, "after label 'a' but found 'IN'"),
            ("a inx {'x'}", 3, "but found 'inx'"),
            ("a b == 'c'", 3, "but found 'b'"),
            ("a ! = 'b'", 3, "after label 'a' but found '!'"),
            ("a (", 3, "but found '('"),
            ("has (a)", 5, "write 'has(' with no space before '(' but found '('"),
            ("all ()", 5, "write 'all(' with no space"),
            // Operand of a comparison: only a quoted string.
            ("a == b", 6, "expected a quoted string after '==' but found label 'b'"),
            ("b contains b", 12, "expected a quoted string after 'contains' but found label 'b'"),
            ("a contains", 11, "expected a quoted string after 'contains' but found end of selector"),
            ("a starts with in", 15, "after 'starts with' but found label 'in'"),
            ("a != {'x'}", 6, "after '!=' but found '{'"),
            // Literal on the left.
            ("'b' == b", 1, "expected a label, '!', '(', has(<label>), all() or global() but found string \"b\" (the label must be on the left, unquoted)"),
            // Sets.
            ("a in 'x'", 6, "expected '{' to start a set after 'in' but found string \"x\""),
            ("a not in x", 10, "after 'not in' but found label 'x'"),
            ("a in {'x' 'y'}", 11, "expected ',' or '}' in the set opened at column 6 but found string \"y\""),
            ("a in {,}", 7, "expected a quoted string or '}' in the set opened at column 6 but found ','"),
            ("a in {'x',,}", 11, "expected a quoted string or '}' in the set opened at column 6 but found ','"),
            ("a in {'x'", 10, "but found end of selector"),
            ("a in {x}", 7, "but found label 'x'"),
            // Missing or extra operands and trailing garbage.
            ("!", 2, "after '!' but found end of selector"),
            ("!!", 3, "after '!' but found end of selector"),
            ("()", 2, "but found ')' (empty parentheses are not an expression)"),
            ("a == 'b' &&", 12, "but found end of selector"),
            ("a == 'b' || || has(c)", 13, "but found '||'"),
            ("&& has(a)", 1, "but found '&&'"),
            ("!= 'x'", 1, "but found '!='"),
            ("a == \"b\" c == \"d\"", 10, "expected '&&', '||' or the end of the selector but found label 'c'"),
            ("has(a) has(b)", 8, "but found 'has(b)'"),
            ("a == 'b')", 9, "expected '&&', '||' or the end of the selector but found ')'"),
            ("(a == 'b'", 10, "expected '&&', '||' or ')' to close the '(' at column 1 but found end of selector"),
            ("(has(a) || (has(b) has(c)))", 20, "to close the '(' at column 12 but found 'has(c)'"),
            ("%", 1, "but found '%'"),
            ("a == 'b' && %", 13, "but found '%'"),
            ("a == 'b' %", 10, "but found '%'"),
            // Lexical errors surface unchanged.
            ("label == \"value", 10, "unterminated string"),
            ("a = 'b'", 3, "single '='"),
            ("foo == \"bar\" &", 14, "single '&'"),
            ("a == \"b\" | has(foo)", 10, "single '|'"),
            ("a == 'b'\n", 9, "control character U+000A"),
            ("has(a b)", 7, "expected ')' to close 'has(' but found 'b'"),
            ("global(", 8, "expected ')' to close 'global('"),
            (&long_sel, 1, "at most 512 characters but found one of 513"),
            (&deep_bad, MAX_NESTING + 1, "at most 256 levels"),
            // Non-ASCII: reported by character column, never a panic.
            ("é == 'x'", 1, "but found 'é'"),
            ("a == 'é' ü", 10, "but found 'ü'"),
            ("a == 'é' && 🦀", 13, "but found '🦀'"),
            ("a\u{a0}== 'x'", 2, "but found '\u{a0}'"),
        ];
        for (text, column, message) in cases {
            let e = error(text);
            assert_eq!(e.column, column, "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}\n  wanted: {message}");
        }
    }
}
