//! Who walks an endpoint's policies inside the hooks: the interpreter of `walk.rs`, or compiled programs.
//! The node model follows the hooks the same way for both, so the two can only differ in the walks.

use super::walk::{log_event, walk_profiles, walk_tiers, ProfileEnd, TierEnd, WalkInput};
use crate::ids::EndpointRef;
use crate::packet::PacketHeader;
use crate::resolve::{Direction, ResolvedNode, Stage};
use crate::verdict::{LogEvent, RuleRef};

/// How one walk ended. The normal stage runs profiles after the tiers; the others stop at the tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    Allow(RuleRef),
    Deny(RuleRef),
    EndOfTier(String),
    NoProfileMatched,
    FellThrough,
}

pub trait PolicyWalker: std::fmt::Debug {
    /// Takes a new resolved node. Every walker takes every node: the compile cannot fail (a rule it cannot
    /// express is refused when the resources are loaded, not here).
    fn rebuild(&mut self, world: &ResolvedNode);
    /// Walks `ep`'s policies of `stage` for direction `d`; Log rules append to `logs`.
    fn walk(
        &self,
        world: &ResolvedNode,
        ep: EndpointRef,
        d: Direction,
        stage: Stage,
        pkt: &PacketHeader,
        logs: &mut Vec<LogEvent>,
    ) -> WalkEnd;
    /// Whether any policy of `stage` selects `ep` (for direction `d`, or either when `None`).
    fn has_policies(&self, world: &ResolvedNode, ep: EndpointRef, stage: Stage, d: Option<Direction>) -> bool;
}

/// Walks interpreted directly from the resources: the reference.
#[derive(Clone, Copy, Debug, Default)]
pub struct Interpreted;

impl PolicyWalker for Interpreted {
    fn rebuild(&mut self, _world: &ResolvedNode) {}

    fn walk(
        &self,
        world: &ResolvedNode,
        ep: EndpointRef,
        d: Direction,
        stage: Stage,
        pkt: &PacketHeader,
        logs: &mut Vec<LogEvent>,
    ) -> WalkEnd {
        let input = WalkInput { world, endpoint: ep.endpoint(world), direction: d, stage, pkt };
        match walk_tiers(&input, logs) {
            TierEnd::Allow(r) => WalkEnd::Allow(r),
            TierEnd::Deny(r) => WalkEnd::Deny(r),
            TierEnd::EndOfTier(t) => WalkEnd::EndOfTier(t),
            TierEnd::FellThrough if stage == Stage::Normal => match walk_profiles(&input, logs) {
                ProfileEnd::Allow(r) => WalkEnd::Allow(r),
                ProfileEnd::Deny(r) => WalkEnd::Deny(r),
                ProfileEnd::NoMatch => WalkEnd::NoProfileMatched,
            },
            TierEnd::FellThrough => WalkEnd::FellThrough,
        }
    }

    fn has_policies(&self, world: &ResolvedNode, ep: EndpointRef, stage: Stage, d: Option<Direction>) -> bool {
        let endpoint = ep.endpoint(world);
        match d {
            Some(d) => world.has_policies_for(endpoint, stage, d),
            None => world.has_policies(endpoint, stage),
        }
    }
}

/// Re-exported for walkers that build log events from rule references.
pub fn log_for(world: &ResolvedNode, rule: RuleRef) -> LogEvent {
    log_event(world, rule)
}
