//! Whole-module tests: the public parity vectors, canonical-form round trips, robustness on
//! arbitrary input, and the combination helpers other modules build selectors with.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

type Map = BTreeMap<String, String>;

fn labels(pairs: &[(&str, &str)]) -> Map {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn sel(text: &str) -> Selector {
    match Selector::parse(text) {
        Ok(s) => s,
        Err(e) => panic!("{text:?}: {e}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Match,
    NoMatch,
    Error,
}
use Expect::{Error, Match, NoMatch};

/// The YAML vector that stands for a 513-character label (the file cannot spell it out).
const LONG_LABEL_VECTOR: &str = "\"a\" repeated 513 times == \"value\"";

/// /work/shared/parity/cases/selectors-public.yaml, in file order.
/// One vector: selector text, the entity's labels, the expected verdict.
type Vector = (&'static str, &'static [(&'static str, &'static str)], Expect);

const PUBLIC_VECTORS: &[Vector] = &[
    ("a == 'a1' && b == 'b1'", &[("a", "a1"), ("b", "b1")], Match),
    (" ", &[], Match),
    ("a starts with \"a\"", &[("a", "baa")], NoMatch),
    ("global() || has(x)", &[], Match),
    (
        "pcns.name == \"kube-system\" && projectcalico.org/orchestrator == \"k8s\"",
        &[("pcns.name", "kube-system"), ("projectcalico.org/orchestrator", "k8s")],
        Match,
    ),
    ("a contains \"a\"", &[("b", "aaa")], NoMatch),
    ("b", &[], Error),
    ("label == \"value", &[], Error),
    ("a in {\"x\" \"y\"}", &[], Error),
    ("a IN {\"x\"}", &[], Error),
    ("foo == \"bar\" &", &[], Error),
    ("%", &[], Error),
    ("b contains b", &[], Error),
    ("a != 'a1' && b != 'b1'", &[("a", "a1"), ("b", "b1")], NoMatch),
    (" all()", &[("a", "b")], Match),
    ("global(", &[], Error),
    ("a != 'a1' || b != 'b1'", &[("a", "a1"), ("b", "b1")], NoMatch),
    ("a == \"b\" && c == \"d\"", &[("a", "b"), ("c", "d")], Match),
    ("a == \"b\" | has(foo)", &[], Error),
    ("a == \"b\" && c == \"d\"", &[("a", "c"), ("c", "d")], NoMatch),
    ("!has(a) || a == \"x\"", &[("a", "y")], NoMatch),
    ("a contains \"a\"", &[("a", "a")], Match),
    ("a starts with \"a\"", &[], NoMatch),
    (LONG_LABEL_VECTOR, &[], Error),
    ("(a == \"b\" || c == \"d\") && e == \"f\"", &[("a", "b")], NoMatch),
    ("a not in {\"b\"} || has(z)", &[("a", "b")], NoMatch),
    ("!!", &[], Error),
    ("()", &[], Error),
    ("a contains \"\"", &[("a", "q")], Match),
    ("a contains", &[], Error),
    ("a ends with \"a\"", &[("a", "b")], NoMatch),
    ("in == \"x\"", &[("in", "x")], Match),
    ("has(a b)", &[], Error),
    ("a != \"b\" && a != \"c\"", &[], Match),
    ("!!!!has(a)", &[("a", "x")], Match),
    ("! a == 'a1' || ! b == 'b1'", &[("a", "a1"), ("b", "b1")], NoMatch),
    ("a inx {\"x\"}", &[], Error),
    ("a in { \"x\" , \"y\" }", &[("a", "y")], Match),
    ("a == \"1\"", &[("a", "01")], NoMatch),
    (
        "pcns.name == \"kube-system\" && projectcalico.org/orchestrator == \"k8s\"",
        &[("name", "kube-system"), ("projectcalico.org/orchestrator", "k8s")],
        NoMatch,
    ),
];

fn outcome(text: &str, l: &Map) -> Expect {
    match Selector::parse(text) {
        Err(_) => Error,
        Ok(s) if s.matches(l) => Match,
        Ok(_) => NoMatch,
    }
}

// semantics §5.1–§5.3: every public parity vector, and the same verdict from its canonical form
#[test]
fn public_vectors() {
    assert_eq!(PUBLIC_VECTORS.len(), 40);
    for (yaml, pairs, want) in PUBLIC_VECTORS {
        let text =
            if *yaml == LONG_LABEL_VECTOR { format!("{} == \"value\"", "a".repeat(513)) } else { yaml.to_string() };
        let l = labels(pairs);
        assert_eq!(outcome(&text, &l), *want, "{yaml:?} on {l:?}");
        if let Ok(s) = Selector::parse(&text) {
            assert_eq!(outcome(&s.to_string(), &l), *want, "canonical {s} of {yaml:?}");
        }
    }
    // The 512-character label next to the rejected one is fine.
    let ok = format!("{} == \"value\"", "a".repeat(512));
    assert_eq!(outcome(&ok, &labels(&[])), NoMatch);
}

/// Label maps chosen to separate the selectors below: absent, empty, case and prefix variants.
fn label_maps() -> Vec<Map> {
    vec![
        labels(&[]),
        labels(&[("a", "")]),
        labels(&[("a", "x")]),
        labels(&[("a", "X"), ("b", "y")]),
        labels(&[("a", "xyz"), ("b", ""), ("c", "it's")]),
        labels(&[("a", "y"), ("c", "say \"hi\""), ("d", "1")]),
        labels(&[("b", "x"), ("d", "01"), ("in", "x")]),
        labels(&[("a", "prefix-x"), ("b", "y"), ("c", "d"), ("d", "1"), ("e", "")]),
        labels(&[("pcns.a", "x"), ("projectcalico.org/namespace", "ns1")]),
        labels(&[("a", "x"), ("b", "y"), ("c", "d"), ("d", "2"), ("e", "f"), ("in", "")]),
        labels(&[("a", "prez"), ("b", "y"), ("e", "g"), ("in", "")]),
        labels(&[("a", "x"), ("c", "it's"), ("d", "2"), ("e", "f")]),
        labels(&[("contains", "x"), ("not", "y"), ("a", "prefix-yx")]),
    ]
}

/// Selectors covering every operator, quoting, precedence and nesting.
const ROUND_TRIP: &[&str] = &[
    "",
    "all()",
    "global()",
    "!all()",
    "has(a)",
    "!has(a)",
    "a == 'x'",
    "a == ''",
    "a != 'x'",
    "a != ''",
    "a in {'x', 'y', 'x'}",
    "a in {}",
    "a not in {'x',}",
    "a not in {}",
    "a contains 'y'",
    "a contains ''",
    "a startswith 'pre'",
    "a ends  with 'z'",
    "c == 'it''s'",
    "c == \"it's\"",
    "c == 'say \"hi\"'",
    "c in {'say \"hi\"', \"it's\", 'd'}",
    "in == 'x'",
    "contains contains 'x'",
    "not not in {'x'}",
    "a == 'x' && b == 'y'",
    "a == 'x' || b == 'y'",
    "a == 'x' || b == 'y' && c == 'd'",
    "(a == 'x' || b == 'y') && c == 'd'",
    "!(a == 'x' || b == 'y') && !c == 'd'",
    "!!a == 'x'",
    "!!!(has(a) && has(b))",
    "!(!has(a))",
    "has(a) && has(b) && has(c) && has(d)",
    "(has(a) && has(b)) && (has(c) || has(d) || has(e))",
    "((((has(e)))))",
    "d not in {'1', '2'} || !has(in) && e != 'f'",
    "has(a) && a != '' || b in {''} || all() && !global()",
    "pcns.a == 'x' && projectcalico.org/namespace in {'ns1', 'ns2'}",
    "a starts with 'prefix' && a ends with 'x' && !a contains '-y'",
    "(a == 'x' && (b == 'y' || (c == 'd' && (d == '2' || !has(e)))))",
];

// semantics §5.4: the canonical form re-parses to an equivalent selector (here: the same tree)
#[test]
fn canonical_round_trip() {
    let maps = label_maps();
    for text in ROUND_TRIP {
        // `'it''s'` is two adjacent strings, an error; skip texts that are not selectors.
        let Ok(original) = Selector::parse(text) else {
            assert_eq!(*text, "c == 'it''s'", "unexpected parse failure");
            continue;
        };
        let canonical = original.to_string();
        let reparsed = sel(&canonical);
        assert_eq!(reparsed, original, "{text:?} printed as {canonical:?} re-parses to another tree");
        assert_eq!(reparsed.to_string(), canonical, "canonical form of {text:?} is not stable");
        for m in &maps {
            assert_eq!(original.matches(m), reparsed.matches(m), "{text:?} vs {canonical:?} on {m:?}");
        }
    }
    // The vectors do separate the selectors: not everything is trivially true or false.
    let verdicts: BTreeSet<Vec<bool>> = ROUND_TRIP
        .iter()
        .filter_map(|t| Selector::parse(t).ok())
        .map(|s| maps.iter().map(|m| s.matches(m)).collect())
        .collect();
    assert!(verdicts.len() > 25, "only {} distinct behaviours", verdicts.len());
}

// semantics §5.4: trees built in code (not only parsed ones) print as re-parseable text
#[test]
fn built_trees_round_trip() {
    let maps = label_maps();
    let built = [
        Selector::all().and(sel("has(a)")).and(Selector::from_expr(Expr::In("b".into(), BTreeSet::new())).negate()),
        sel("a == 'x' || has(b)").negate().negate(),
        Selector::from_expr(Expr::Or(vec![Expr::Eq("a".into(), "x".into())])),
        Selector::from_expr(Expr::And(vec![Expr::Or(vec![]), Expr::Has("a".into())])),
        sel("team == 'x' && all()")
            .with_label_prefix("pcns.")
            .replace_all(&Expr::Has("projectcalico.org/namespace".into())),
    ];
    for s in built {
        let reparsed = sel(&s.to_string());
        assert_eq!(reparsed, s, "{s}");
        for m in &maps {
            assert_eq!(s.matches(m), reparsed.matches(m), "{s} on {m:?}");
        }
    }
}

/// Deterministic pseudo-random numbers (no external crates): a 64-bit LCG.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

// semantics §5.1: arbitrary input (token soup, control and multi-byte characters) never panics,
// errors point inside the text, and whatever parses round-trips through its canonical form
#[test]
fn arbitrary_input_never_panics() {
    const PIECES: &[&str] = &[
        "a",
        "b",
        "in",
        " ",
        " ",
        "\t",
        "==",
        "!=",
        "!",
        "&&",
        "||",
        "&",
        "|",
        "=",
        "(",
        ")",
        "{",
        "}",
        ",",
        "'x'",
        "\"y\"",
        "''",
        "'",
        "\"",
        "not",
        "notin",
        "not in",
        "contains",
        "starts",
        "with",
        "ends with",
        "has(",
        "has(a)",
        "all()",
        "global()",
        "all(",
        "\n",
        "é",
        "🦀",
        "%",
        "-",
        ".",
        "/",
        "\u{0}",
        "'é\"'",
    ];
    let maps = label_maps();
    let mut rng = Lcg(0x5e1e_c702);
    let mut parsed = 0;
    for _ in 0..20_000 {
        let text: String = (0..rng.below(12)).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        match Selector::parse(&text) {
            Err(e) => {
                let len = text.chars().count();
                assert!((1..=len + 1).contains(&e.column), "{text:?}: column {} outside 1..={}", e.column, len + 1);
                assert!(e.message.starts_with("expected") || e.message.contains("expected"), "{text:?}: {e}");
            }
            Ok(s) => {
                parsed += 1;
                let reparsed = sel(&s.to_string());
                assert_eq!(reparsed, s, "{text:?} printed as {s}");
                for m in &maps {
                    assert_eq!(s.matches(m), reparsed.matches(m), "{text:?} on {m:?}");
                }
            }
        }
    }
    assert!(parsed > 100, "the generator should produce some valid selectors, got {parsed}");
}

// semantics §2.1: combining selectors the way Felix does, with all() dropping out
#[test]
fn and_negate_helpers() {
    let a = sel("has(a)");
    let b = sel("b == 'x' || has(c)");
    assert_eq!(Selector::all().and(a.clone()), a);
    assert_eq!(a.clone().and(Selector::all()), a);
    assert!(Selector::all().and(Selector::all()).is_all());
    let ab = a.clone().and(b.clone());
    assert_eq!(ab.to_string(), "(has(a) && (b == \"x\" || has(c)))");
    // No flattening: the same tree as parsing "(a) && (b)".
    assert_eq!(ab.clone().and(sel("has(d)")), sel("((has(a)) && (b == 'x' || has(c))) && (has(d))"));
    assert_eq!(a.clone().negate().to_string(), "!has(a)");
    assert_eq!(b.clone().negate().to_string(), "!(b == \"x\" || has(c))");
    assert_eq!(a.clone().negate().negate().expr(), &Expr::Not(Box::new(Expr::Not(Box::new(Expr::Has("a".into()))))));
    let l = labels(&[("a", ""), ("c", "")]);
    assert!(ab.matches(&l));
    assert!(!ab.clone().negate().matches(&l));
    assert!(Selector::all().negate().to_string() == "!all()" && !Selector::all().negate().is_all());
}

// semantics §5.2: the public constructors and accessors
#[test]
fn api_basics() {
    assert!(Selector::all().is_all());
    assert!(sel("").is_all());
    assert!(sel("  all( ) ").is_all());
    assert!(!sel("all() && all()").is_all());
    assert_eq!(Selector::from_expr(Expr::Has("a".into())), sel("has(a)"));
    assert_eq!(sel("has(a)").expr(), &Expr::Has("a".into()));
    let parsed: Selector = match "a in {'x'}".parse() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(parsed, sel("a in {\"x\",}"));
    let err = match "a ==".parse::<Selector>() {
        Ok(s) => panic!("parsed {s}"),
        Err(e) => e,
    };
    assert_eq!(err.to_string(), "column 5: expected a quoted string after '==' but found end of selector");
    // Ordering and hashing are derived, so selectors can key maps and be deduplicated.
    let set: BTreeSet<Selector> = ["has(a)", "has( a )", "!!has(a)", "has(b)"].iter().map(|t| sel(t)).collect();
    assert_eq!(set.len(), 2);
}
