//! Selector evaluation against an entity's labels (semantics §5.3).
//!
//! This runs once per (selector, endpoint) pair in the reference evaluator and in rule-set
//! resolution, so it only borrows: label lookups return `&str`, set membership uses
//! `BTreeSet<String>::contains(&str)`, and substring tests use `str` methods, none of which
//! allocate. All comparisons are byte-wise (case-sensitive, no trimming, no numeric meaning).

use super::{Expr, Labels};

/// Whether `labels` satisfy `e`. `&&`/`||` short-circuit; nothing has side effects.
pub(super) fn eval<L: Labels + ?Sized>(e: &Expr, labels: &L) -> bool {
    match e {
        // global() is "true as a label test"; its scoping meaning comes from a rewrite (§2.2).
        Expr::All | Expr::Global => true,
        // Present with an empty value still counts as present.
        Expr::Has(k) => labels.label(k).is_some(),
        Expr::Eq(k, v) => labels.label(k) == Some(v.as_str()),
        // Negative tests are true for entities that lack the label entirely.
        Expr::Ne(k, v) => labels.label(k) != Some(v.as_str()),
        Expr::In(k, set) => labels.label(k).is_some_and(|v| set.contains(v)),
        Expr::NotIn(k, set) => !labels.label(k).is_some_and(|v| set.contains(v)),
        Expr::Contains(k, s) => labels.label(k).is_some_and(|v| v.contains(s.as_str())),
        Expr::StartsWith(k, s) => labels.label(k).is_some_and(|v| v.starts_with(s.as_str())),
        Expr::EndsWith(k, s) => labels.label(k).is_some_and(|v| v.ends_with(s.as_str())),
        Expr::Not(inner) => !eval(inner, labels),
        Expr::And(terms) => terms.iter().all(|t| eval(t, labels)),
        Expr::Or(terms) => terms.iter().any(|t| eval(t, labels)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use super::super::Selector;
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(text: &str) -> Selector {
        match Selector::parse(text) {
            Ok(s) => s,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    /// Checks `text` against: no labels, a=x, a="" (present but empty), a=y.
    fn check(text: &str, want: [bool; 4]) {
        let s = sel(text);
        let cases = [labels(&[]), labels(&[("a", "x")]), labels(&[("a", "")]), labels(&[("a", "y"), ("b", "x")])];
        for (l, want) in cases.iter().zip(want) {
            assert_eq!(s.matches(l), want, "{text} on {l:?}");
        }
    }

    // semantics §5.3: == needs the label present with exactly that value
    #[test]
    fn equality() {
        check("a == 'x'", [false, true, false, false]);
        check("a == ''", [false, false, true, false]);
    }

    // semantics §5.3: != matches endpoints lacking the label
    #[test]
    fn inequality() {
        check("a != 'x'", [true, false, true, true]);
        check("a != ''", [true, true, false, true]);
    }

    // semantics §5.3: in needs presence; empty set never matches
    #[test]
    fn in_set() {
        check("a in {'x', 'y'}", [false, true, false, true]);
        check("a in {''}", [false, false, true, false]);
        check("a in {}", [false, false, false, false]);
    }

    // semantics §5.3: not in matches absent labels; empty set always matches
    #[test]
    fn not_in_set() {
        check("a not in {'x'}", [true, false, true, true]);
        check("a not in {}", [true, true, true, true]);
    }

    // semantics §5.3: has() is presence, even with an empty value
    #[test]
    fn has() {
        check("has(a)", [false, true, true, true]);
        check("!has(a)", [true, false, false, false]);
    }

    // semantics §5.3: contains / starts with / ends with need presence; "" matches any present value
    #[test]
    fn substring_tests() {
        check("a contains 'x'", [false, true, false, false]);
        check("a contains ''", [false, true, true, true]);
        check("a starts with ''", [false, true, true, true]);
        check("a ends with ''", [false, true, true, true]);
        let l = labels(&[("a", "prefix-middle-suffix")]);
        for (text, want) in [
            ("a contains '-middle-'", true),
            ("a contains 'fix-mid'", true),
            ("a contains 'MIDDLE'", false),
            ("a starts with 'prefix'", true),
            ("a starts with 'suffix'", false),
            ("a ends with 'suffix'", true),
            ("a ends with 'prefix'", false),
            ("a contains 'prefix-middle-suffix!'", false),
        ] {
            assert_eq!(sel(text).matches(&l), want, "{text}");
        }
    }

    // semantics §5.3: comparisons are byte-wise: case-sensitive, no trimming, no numbers
    #[test]
    fn byte_wise() {
        let l = labels(&[("a", "Ab "), ("n", "01"), ("u", "é")]);
        for (text, want) in [
            ("a == 'Ab '", true),
            ("a == 'ab '", false),
            ("a == 'Ab'", false),
            ("n == '1'", false),
            ("n in {'1', '1.0'}", false),
            ("u == 'é'", true),
            ("u == 'e\u{301}'", false),
            ("u starts with '\u{c3}'", false),
        ] {
            assert_eq!(sel(text).matches(&l), want, "{text}");
        }
    }

    // semantics §5.3: all() and global() are true as label tests; !, && and || are boolean
    #[test]
    fn constants_and_connectives() {
        check("all()", [true; 4]);
        check("global()", [true; 4]);
        check("!all()", [false; 4]);
        check("has(a) && a != ''", [false, true, false, true]);
        check("!has(a) || a == 'y'", [true, false, false, true]);
        check("has(b) || a == 'x' && has(a)", [false, true, false, true]);
    }

    // semantics §5.3: evaluation through the Labels trait works for both map kinds and unsized callers
    #[test]
    fn label_sources() {
        let s = sel("a == 'x' && b not in {'y'}");
        let mut h: HashMap<String, String> = HashMap::new();
        h.insert("a".into(), "x".into());
        assert!(s.matches(&h));
        let dynamic: &dyn Labels = &h;
        assert!(s.matches(dynamic));
        let b = labels(&[("a", "x"), ("b", "y")]);
        assert!(!s.matches(&b));
        // Built by hand, not parsed: the evaluator does not depend on parser shapes.
        let e = Expr::Or(vec![Expr::In("z".into(), BTreeSet::new()), Expr::Not(Box::new(Expr::Has("z".into())))]);
        assert!(eval(&e, &b));
    }
}
