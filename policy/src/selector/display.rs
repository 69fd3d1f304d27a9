//! Felix's canonical selector text (semantics §5.4).
//!
//! Every `&&`/`||` group is parenthesised (the root too) with single spaces around operators, `!`
//! is glued to its operand, strings are double-quoted unless they contain `"`, sets print sorted
//! and de-duplicated (a `BTreeSet` already is), and the two-word operators use their spaced
//! spelling. Because groups are always parenthesised and `!` binds tighter than any binary
//! operator, re-parsing the text gives back the very same tree. The one place this differs from
//! Felix: a `Not` directly under a `Not` (only from `!(!x)` or code) prints as `!(!x)` where Felix
//! prints `!!x`, which would re-parse as `x`.

use std::fmt;

use super::{Expr, Selector};

/// Quotes a value the way Calico prints it: `"` unless the value contains `"`, then `'`.
///
/// A value containing both quote characters cannot be written in the language at all (there are
/// no escapes), so it can only come from a hand-built tree; it is printed like Calico does, with
/// `'`, which will not re-parse to the same value.
pub(super) fn quote(value: &str) -> String {
    let q = if value.contains('"') { '\'' } else { '"' };
    format!("{q}{value}{q}")
}

fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    let q = if value.contains('"') { '\'' } else { '"' };
    write!(f, "{q}{value}{q}")
}

fn write_set<'a>(f: &mut fmt::Formatter<'_>, values: impl IntoIterator<Item = &'a String>) -> fmt::Result {
    f.write_str("{")?;
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_quoted(f, v)?;
    }
    f.write_str("}")
}

fn write_group(f: &mut fmt::Formatter<'_>, terms: &[Expr], op: &str) -> fmt::Result {
    f.write_str("(")?;
    for (i, t) in terms.iter().enumerate() {
        if i > 0 {
            f.write_str(op)?;
        }
        write!(f, "{t}")?;
    }
    f.write_str(")")
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Global => f.write_str("global()"),
            Expr::Has(k) => write!(f, "has({k})"),
            Expr::Eq(k, v) => {
                write!(f, "{k} == ")?;
                write_quoted(f, v)
            }
            Expr::Ne(k, v) => {
                write!(f, "{k} != ")?;
                write_quoted(f, v)
            }
            Expr::In(k, set) => {
                write!(f, "{k} in ")?;
                write_set(f, set)
            }
            Expr::NotIn(k, set) => {
                write!(f, "{k} not in ")?;
                write_set(f, set)
            }
            Expr::Contains(k, v) => {
                write!(f, "{k} contains ")?;
                write_quoted(f, v)
            }
            Expr::StartsWith(k, v) => {
                write!(f, "{k} starts with ")?;
                write_quoted(f, v)
            }
            Expr::EndsWith(k, v) => {
                write!(f, "{k} ends with ")?;
                write_quoted(f, v)
            }
            // `!!x` would re-parse as `x` (parity collapse); parenthesising keeps the tree.
            Expr::Not(inner) if matches!(**inner, Expr::Not(_)) => write!(f, "!({inner})"),
            Expr::Not(inner) => write!(f, "!{inner}"),
            Expr::And(terms) => write_group(f, terms, " && "),
            Expr::Or(terms) => write_group(f, terms, " || "),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        match Selector::parse(text) {
            Ok(s) => s.to_string(),
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    // semantics §5.4: canonical text of every construct
    #[test]
    fn canonical_form() {
        for (text, want) in [
            ("", "all()"),
            (" \t ", "all()"),
            ("all( )", "all()"),
            ("global()", "global()"),
            ("has( a )", "has(a)"),
            ("a=='b'", r#"a == "b""#),
            ("a!='b'", r#"a != "b""#),
            (r#"a == 'say "hi"'"#, r#"a == 'say "hi"'"#),
            (r#"a == "it's""#, r#"a == "it's""#),
            ("a in {'z', 'a', 'z',}", r#"a in {"a", "z"}"#),
            ("a in {}", "a in {}"),
            ("a notin{'b'}", r#"a not in {"b"}"#),
            (r#"a in {'x"', "y"}"#, r#"a in {'x"', "y"}"#),
            ("a contains''", r#"a contains """#),
            ("a startswith 'p'", r#"a starts with "p""#),
            ("a ends\t\twith 's'", r#"a ends with "s""#),
            ("! has(a)", "!has(a)"),
            ("!!has(a)", "has(a)"),
            ("!!!a == 'b'", r#"!a == "b""#),
            ("a == 'b' && c == 'd'", r#"(a == "b" && c == "d")"#),
            ("a == 'b' || c == 'd' && has(e)", r#"(a == "b" || (c == "d" && has(e)))"#),
            ("(a == 'b' || c == 'd') && has(e)", r#"((a == "b" || c == "d") && has(e))"#),
            ("!(has(a) || has(b))", "!(has(a) || has(b))"),
            ("((has(a)))", "has(a)"),
            ("(has(a) && has(b)) && has(c)", "((has(a) && has(b)) && has(c))"),
            ("has(a) && has(b) && has(c)", "(has(a) && has(b) && has(c))"),
            ("!(!has(a))", "!(!has(a))"),
            ("!(!(!a == 'b'))", r#"!(!(!a == "b"))"#),
            ("!!(!has(a))", "!has(a)"),
        ] {
            assert_eq!(canon(text), want, "{text:?}");
        }
    }

    // semantics §5.4: quoting picks ' only when the value holds "
    #[test]
    fn quoting() {
        assert_eq!(quote("plain"), r#""plain""#);
        assert_eq!(quote("it's"), r#""it's""#);
        assert_eq!(quote(r#"a"b"#), r#"'a"b'"#);
        assert_eq!(quote(""), r#""""#);
    }
}
