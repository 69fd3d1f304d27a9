//! The compiled level: the reference's node model with its policy walks done by compiled programs (the
//! classifier the dataplane runs), for `parity --level compiled` and the compiled differential test.

use std::sync::Arc;

use calxdp_policy::compile::{flow_key, CompiledTables, ProgramCache};
use calxdp_policy::ids::EndpointRef;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::walker::log_for;
use calxdp_policy::reference::PolicyWalker;
use calxdp_policy::resolve::{Direction, ResolvedNode, Stage};
use calxdp_policy::verdict::{LogEvent, RuleRef};
use calxdp_policy::walk_end::{NamedWalkEnd, WalkEnd};

/// Walks with the compiled tables of the current resolved node.
#[derive(Debug, Default)]
pub struct Compiled {
    cache: ProgramCache,
    tables: Arc<CompiledTables>,
    epoch: u64,
}

impl Compiled {
    pub fn tables(&self) -> &Arc<CompiledTables> {
        &self.tables
    }
}

impl PolicyWalker for Compiled {
    fn rebuild(&mut self, world: &ResolvedNode) {
        self.epoch += 1;
        self.tables = Arc::new(self.cache.compile(world, self.epoch));
    }

    fn walk(
        &self,
        world: &ResolvedNode,
        ep: EndpointRef,
        d: Direction,
        stage: Stage,
        pkt: &PacketHeader,
        logs: &mut Vec<LogEvent>,
    ) -> NamedWalkEnd {
        let Some(program) = self.tables.program(ep, stage, d) else { return WalkEnd::FellThrough };
        let endpoint = ep.endpoint(world).id.clone();
        let rule_ref = |rule: u32| {
            let origin = program.rule(rule).expect("a rule the walk ended at");
            RuleRef {
                stage,
                direction: d,
                endpoint: endpoint.clone(),
                owner: origin.owner.clone(),
                index: origin.index,
                action: origin.action,
            }
        };
        let key = flow_key(pkt);
        let end = program
            .evaluate_reaching(&key, |rule, matched| logs.push(LogEvent { matched, ..log_for(world, rule_ref(rule)) }));
        end.map(rule_ref, |t| program.flat.tiers[t as usize].clone())
    }

    fn has_policies(&self, _world: &ResolvedNode, ep: EndpointRef, stage: Stage, d: Option<Direction>) -> bool {
        self.tables.has_policies(ep, stage, d)
    }
}
