//! How a packet's walk ends, in the two shapes every level shares: how one endpoint's policy walk ended
//! ([`WalkEnd`]) and what one iptables chain answered ([`ChainEnd`]). The levels differ only in what they
//! carry: the hot path carries indices and a nameless decision, the reference and the explanations carry
//! rule references, tier names and a [`crate::verdict::Reason`].

/// How one walk of an endpoint's policies (one direction, one stage) ended. `R` says which rule decided
/// and `T` which tier ended in a drop: indices into a compiled program on the hot path
/// ([`crate::compile::ProgramEnd`]), a rule reference and a tier name in the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkEnd<R, T> {
    /// An Allow rule matched.
    Allow(R),
    /// A Deny rule matched (in a profile too: a profile's rules end the walk as a policy's do).
    Deny(R),
    /// A tier had policies for the endpoint, none gave a verdict, and its default is Deny (semantics §4.2).
    EndOfTier(T),
    /// The normal stage only: out of the last tier, and no profile allowed or denied.
    NoProfileMatched,
    /// The stages without profiles: no tier had a policy for the endpoint, or the last that had passed.
    FellThrough,
}

impl<R, T> WalkEnd<R, T> {
    /// The same end with its rule and tier translated (indices to names, for an explanation).
    pub fn map<R2, T2>(self, rule: impl FnOnce(R) -> R2, tier: impl FnOnce(T) -> T2) -> WalkEnd<R2, T2> {
        match self {
            WalkEnd::Allow(r) => WalkEnd::Allow(rule(r)),
            WalkEnd::Deny(r) => WalkEnd::Deny(rule(r)),
            WalkEnd::EndOfTier(t) => WalkEnd::EndOfTier(tier(t)),
            WalkEnd::NoProfileMatched => WalkEnd::NoProfileMatched,
            WalkEnd::FellThrough => WalkEnd::FellThrough,
        }
    }
}

/// A walk's end as the reference and the explanations name it.
pub type NamedWalkEnd = WalkEnd<crate::verdict::RuleRef, String>;

/// What one of Calico's chains answered: ACCEPT, DROP, or RETURN (no verdict: later hooks or the host's
/// defaults decide). `D` says why: a nameless decision on the hot path, a `Reason` in the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainEnd<D> {
    Accept(D),
    Drop(D),
    Return(D),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_translates_rules_and_tiers_and_keeps_the_ends_without_them() {
        let name = |i: u32| format!("rule {i}");
        let tier = |i: u32| format!("tier {i}");
        assert_eq!(WalkEnd::<u32, u32>::Allow(3).map(name, tier), WalkEnd::Allow("rule 3".to_string()));
        assert_eq!(WalkEnd::<u32, u32>::Deny(4).map(name, tier), WalkEnd::Deny("rule 4".to_string()));
        assert_eq!(WalkEnd::<u32, u32>::EndOfTier(1).map(name, tier), WalkEnd::EndOfTier("tier 1".to_string()));
        assert_eq!(WalkEnd::<u32, u32>::NoProfileMatched.map(name, tier), WalkEnd::NoProfileMatched);
        assert_eq!(WalkEnd::<u32, u32>::FellThrough.map(name, tier), WalkEnd::FellThrough);
    }
}
