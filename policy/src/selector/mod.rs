//! Calico's label selector language (semantics §5).
//!
//! A selector is a boolean expression over an entity's labels (a string→string map):
//! `role == "db" && !has(legacy)`. Policies use one to pick the endpoints they apply to, and
//! rules use them to pick the peers whose IPs they match (semantics §2). This module parses the
//! text exactly as Calico's libcalico-go does (same accepted language, same tree shape), evaluates
//! it against labels without allocating, prints Felix's canonical form, and offers the rewrites
//! Calico applies when scoping selectors to namespaces and service accounts (label prefixing with
//! `pcns.`/`pcsa.`, replacing `all()`/`global()`).
//!
//! Files: `lexer` (tokens, §5.1), `parser` (grammar, §5.2), `eval` (§5.3), `display` (canonical
//! text, §5.4), `rewrite` (tree rewrites, §2 and §5.5), `error`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

mod display;
mod error;
mod eval;
mod lexer;
mod parser;
mod rewrite;
#[cfg(test)]
mod tests;

pub use error::{excerpt, SelectorError};

/// Read access to an entity's labels; selectors only ever look labels up by name.
pub trait Labels {
    /// The value of label `key`, if the entity has it (an empty value still counts as present).
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A selector expression tree. Label names and values are kept verbatim (byte-wise semantics).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expr {
    /// `all()`: every entity.
    All,
    /// `global()`: true as a label test; its meaning comes from the namespaceSelector rewrite.
    Global,
    /// `has(label)`.
    Has(String),
    /// `label == "value"`.
    Eq(String, String),
    /// `label != "value"`: also true when the label is absent.
    Ne(String, String),
    /// `label in {...}`.
    In(String, BTreeSet<String>),
    /// `label not in {...}`: also true when the label is absent.
    NotIn(String, BTreeSet<String>),
    /// `label contains "s"`.
    Contains(String, String),
    /// `label starts with "s"`.
    StartsWith(String, String),
    /// `label ends with "s"`.
    EndsWith(String, String),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b && ...`, at least two children.
    And(Vec<Expr>),
    /// `a || b || ...`, at least two children.
    Or(Vec<Expr>),
}

/// A parsed selector: the root of its expression tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    root: Expr,
}

impl Selector {
    /// Parses selector text (semantics §5.1–5.2). Empty or blank text means `all()`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        parser::parse(text).map(|root| Selector { root })
    }

    /// `all()`: matches everything.
    pub fn all() -> Selector {
        Selector { root: Expr::All }
    }

    /// Wraps a tree built in code. `And`/`Or` with fewer than two children are normalised so the
    /// tree always prints as parseable text: one child is the child itself, an empty `And` is
    /// `all()` and an empty `Or` is `!all()` (matches nothing), as their evaluation already implies.
    pub fn from_expr(e: Expr) -> Selector {
        Selector { root: rewrite::normalize(e) }
    }

    /// The root of the expression tree.
    pub fn expr(&self) -> &Expr {
        &self.root
    }

    /// Whether the selector is exactly `all()` (not merely equivalent to it).
    pub fn is_all(&self) -> bool {
        self.root == Expr::All
    }

    /// Whether the labels satisfy the selector (semantics §5.3). Does not allocate.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        eval::eval(&self.root, labels)
    }

    /// `(self) && (other)`, as Felix combines selectors; `all()` on either side drops out.
    /// Existing `And` groups are not flattened, so the tree (and canonical text) is the one Felix
    /// gets from parsing `(a) && (b)`.
    pub fn and(self, other: Selector) -> Selector {
        if self.is_all() {
            return other;
        }
        if other.is_all() {
            return self;
        }
        Selector { root: Expr::And(vec![self.root, other.root]) }
    }

    /// `!(self)`. Always adds a `Not` node (as `!(...)` text would), even over another `Not`.
    pub fn negate(self) -> Selector {
        Selector { root: Expr::Not(Box::new(self.root)) }
    }

    /// Every label name the selector reads gets `prefix` prepended (`pcns.`/`pcsa.` scoping,
    /// semantics §5.5). `all()` and `global()` are left alone.
    pub fn with_label_prefix(&self, prefix: &str) -> Selector {
        Selector { root: rewrite::prefix_labels(&self.root, prefix) }
    }

    /// Every `all()` node replaced by `with` (semantics §2.1/§2.2: `all()` in a namespaceSelector
    /// becomes `has(projectcalico.org/namespace)`).
    pub fn replace_all(&self, with: &Expr) -> Selector {
        Selector { root: rewrite::replace(&self.root, &Expr::All, with) }
    }

    /// Every `global()` node replaced by `with` (semantics §2.2 step 3).
    pub fn replace_global(&self, with: &Expr) -> Selector {
        Selector { root: rewrite::replace(&self.root, &Expr::Global, with) }
    }

    /// Whether `global()` appears anywhere (it is only legal as a whole namespaceSelector).
    pub fn uses_global(&self) -> bool {
        rewrite::contains_node(&self.root, &Expr::Global)
    }

    /// Every label name the selector reads.
    pub fn label_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        rewrite::collect_labels(&self.root, &mut names);
        names
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Selector, SelectorError> {
        Selector::parse(text)
    }
}
