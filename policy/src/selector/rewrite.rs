//! Tree rewrites Calico applies to selectors before evaluating them (semantics §2.1, §2.2, §5.5):
//! namespace and service-account selectors are matched against an endpoint's inherited `pcns.*` /
//! `pcsa.*` labels, so every label name gets a prefix; `all()` and `global()` in them get a
//! concrete meaning ("any namespaced entity", "any non-namespaced entity").
//!
//! Felix does these on the parsed tree (prefixing) or on the text (`all()` replacement); doing
//! both on the tree avoids touching an `all()` that merely appears inside a quoted value.

use std::collections::BTreeSet;

use super::Expr;

/// Rebuilds `e`, letting `f` substitute any node (returning `None` keeps the node and recurses).
fn map_tree(e: &Expr, f: &mut impl FnMut(&Expr) -> Option<Expr>) -> Expr {
    if let Some(replacement) = f(e) {
        return replacement;
    }
    match e {
        Expr::Not(inner) => Expr::Not(Box::new(map_tree(inner, f))),
        Expr::And(terms) => Expr::And(terms.iter().map(|t| map_tree(t, f)).collect()),
        Expr::Or(terms) => Expr::Or(terms.iter().map(|t| map_tree(t, f)).collect()),
        leaf => leaf.clone(),
    }
}

/// Calls `f` on every node, stopping early when it returns `true`.
fn any_node(e: &Expr, f: &mut impl FnMut(&Expr) -> bool) -> bool {
    if f(e) {
        return true;
    }
    match e {
        Expr::Not(inner) => any_node(inner, f),
        Expr::And(terms) | Expr::Or(terms) => terms.iter().any(|t| any_node(t, f)),
        _ => false,
    }
}

/// The label a leaf test reads, if any.
fn label_of(e: &Expr) -> Option<&str> {
    match e {
        Expr::Has(k)
        | Expr::Eq(k, _)
        | Expr::Ne(k, _)
        | Expr::In(k, _)
        | Expr::NotIn(k, _)
        | Expr::Contains(k, _)
        | Expr::StartsWith(k, _)
        | Expr::EndsWith(k, _) => Some(k),
        Expr::All | Expr::Global | Expr::Not(_) | Expr::And(_) | Expr::Or(_) => None,
    }
}

/// Fixes `And`/`Or` nodes with fewer than two children so the tree has a textual form: an empty
/// `And` is true (`all()`), an empty `Or` is false (`!all()`), a single child stands for itself.
pub(super) fn normalize(e: Expr) -> Expr {
    match e {
        Expr::Not(inner) => Expr::Not(Box::new(normalize(*inner))),
        Expr::And(terms) => group(terms, Expr::And, Expr::All),
        Expr::Or(terms) => group(terms, Expr::Or, Expr::Not(Box::new(Expr::All))),
        leaf => leaf,
    }
}

fn group(terms: Vec<Expr>, build: fn(Vec<Expr>) -> Expr, empty: Expr) -> Expr {
    let mut terms: Vec<Expr> = terms.into_iter().map(normalize).collect();
    match terms.len() {
        0 => empty,
        1 => terms.pop().unwrap_or(empty),
        _ => build(terms),
    }
}

/// Prepends `prefix` to every label name.
pub(super) fn prefix_labels(e: &Expr, prefix: &str) -> Expr {
    let p = |k: &str| format!("{prefix}{k}");
    map_tree(e, &mut |node| match node {
        Expr::Has(k) => Some(Expr::Has(p(k))),
        Expr::Eq(k, v) => Some(Expr::Eq(p(k), v.clone())),
        Expr::Ne(k, v) => Some(Expr::Ne(p(k), v.clone())),
        Expr::In(k, s) => Some(Expr::In(p(k), s.clone())),
        Expr::NotIn(k, s) => Some(Expr::NotIn(p(k), s.clone())),
        Expr::Contains(k, v) => Some(Expr::Contains(p(k), v.clone())),
        Expr::StartsWith(k, v) => Some(Expr::StartsWith(p(k), v.clone())),
        Expr::EndsWith(k, v) => Some(Expr::EndsWith(p(k), v.clone())),
        Expr::All | Expr::Global | Expr::Not(_) | Expr::And(_) | Expr::Or(_) => None,
    })
}

/// Replaces every node equal to `target` (used with the leaves `All` and `Global`) by `with`.
pub(super) fn replace(e: &Expr, target: &Expr, with: &Expr) -> Expr {
    let with = normalize(with.clone());
    map_tree(e, &mut |node| (node == target).then(|| with.clone()))
}

/// Whether any node equals `target`.
pub(super) fn contains_node(e: &Expr, target: &Expr) -> bool {
    any_node(e, &mut |node| node == target)
}

/// Adds every label name read by `e` to `out`.
pub(super) fn collect_labels(e: &Expr, out: &mut BTreeSet<String>) {
    any_node(e, &mut |node| {
        if let Some(k) = label_of(node) {
            out.insert(k.to_string());
        }
        false
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::Selector;
    use super::*;

    fn sel(text: &str) -> Selector {
        match Selector::parse(text) {
            Ok(s) => s,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    fn has(k: &str) -> Expr {
        Expr::Has(k.into())
    }

    // semantics §5.5: every label of every operator gets the prefix; all()/global() stay
    #[test]
    fn prefixing() {
        let s = sel("has(a) && b == 'x' && c != 'y' && d in {'1'} && e not in {} && f contains 'f' \
             && g starts with 'g' && h ends with 'h' && !(all() || global() || i == 'a == \"b\"')");
        assert_eq!(
            s.with_label_prefix("pcns.").to_string(),
            "(has(pcns.a) && pcns.b == \"x\" && pcns.c != \"y\" && pcns.d in {\"1\"} && pcns.e not in {} \
             && pcns.f contains \"f\" && pcns.g starts with \"g\" && pcns.h ends with \"h\" \
             && !(all() || global() || pcns.i == 'a == \"b\"'))"
        );
        assert_eq!(
            sel("projectcalico.org/name == 'default'").with_label_prefix("pcsa.").to_string(),
            "pcsa.projectcalico.org/name == \"default\""
        );
        assert!(Selector::all().with_label_prefix("pcns.").is_all());
    }

    // semantics §2.1: a prefixed namespaceSelector matches the namespace labels an endpoint inherits
    #[test]
    fn prefixed_matching() {
        let ns = sel("team == 'a' && !has(legacy)").with_label_prefix("pcns.");
        let mut ep: BTreeMap<String, String> = BTreeMap::new();
        ep.insert("team".into(), "a".into());
        assert!(!ns.matches(&ep), "the endpoint's own labels are not namespace labels");
        ep.insert("pcns.team".into(), "a".into());
        assert!(ns.matches(&ep));
        ep.insert("pcns.legacy".into(), String::new());
        assert!(!ns.matches(&ep));
    }

    // semantics §2.1/§2.2: all() becomes has(projectcalico.org/namespace), global() its negation
    #[test]
    fn replacing() {
        let ns_label = has("projectcalico.org/namespace");
        let s = sel("all() || !all() && a == 'all()'").replace_all(&ns_label);
        assert_eq!(
            s.to_string(),
            "(has(projectcalico.org/namespace) || (!has(projectcalico.org/namespace) && a == \"all()\"))"
        );
        assert_eq!(Selector::all().replace_all(&ns_label).expr(), &ns_label);
        let g = sel("global()").replace_global(&Expr::Not(Box::new(ns_label.clone())));
        assert_eq!(g.to_string(), "!has(projectcalico.org/namespace)");
        // replace_global leaves all() alone and vice versa.
        assert_eq!(sel("all() && global()").replace_global(&has("x")).to_string(), "(all() && has(x))");
        assert_eq!(sel("all() && global()").replace_all(&has("x")).to_string(), "(has(x) && global())");
        // A degenerate replacement is normalised rather than printed as "()".
        assert_eq!(sel("has(a) || all()").replace_all(&Expr::And(vec![])).to_string(), "(has(a) || all())");
    }

    // semantics §2.2: global() is only legal as a whole namespaceSelector, so callers must find it
    #[test]
    fn global_detection() {
        assert!(sel("global()").uses_global());
        assert!(sel("has(a) || !(b == 'c' && global())").uses_global());
        assert!(!sel("global == 'x' && a == 'global()'").uses_global());
        assert!(!Selector::all().uses_global());
    }

    // semantics §5.3: the labels a selector reads, for index/dependency tracking
    #[test]
    fn label_names() {
        let s = sel("has(a) || !(b == 'c' && d in {} && a not in {'x'}) || e contains '' || f starts with '' || g ends with '' || h != 'i'");
        let want: BTreeSet<String> = ["a", "b", "d", "e", "f", "g", "h"].iter().map(|s| s.to_string()).collect();
        assert_eq!(s.label_names(), want);
        assert!(sel("all() && global()").label_names().is_empty());
    }

    // semantics §5.2: And/Or built by hand are normalised to printable shapes
    #[test]
    fn normalizing() {
        assert_eq!(normalize(Expr::And(vec![])), Expr::All);
        assert_eq!(normalize(Expr::Or(vec![])), Expr::Not(Box::new(Expr::All)));
        assert_eq!(normalize(Expr::Or(vec![Expr::And(vec![has("a")])])), has("a"));
        assert_eq!(
            normalize(Expr::Not(Box::new(Expr::And(vec![has("a"), Expr::Or(vec![has("b")])])))),
            Expr::Not(Box::new(Expr::And(vec![has("a"), has("b")])))
        );
        let nothing = Selector::from_expr(Expr::Or(vec![]));
        assert!(!nothing.matches(&BTreeMap::<String, String>::new()));
        assert_eq!(nothing.to_string(), "!all()");
    }
}
