//! `ConfigUpdate` → the Felix settings calxdp implements. Felix sends every parameter some source set
//! explicitly, as the raw string it was given (notes/felix-protocol.md §4.7): keys in Felix's canonical
//! CamelCase (matched here case-insensitively), `oneof` values in any case, `none` for an empty list.
//! Parameters calxdp does not act on are ignored, as Felix's other hundred-odd parameters must be; a value
//! Felix itself would have refused is an error.

use std::collections::BTreeMap;

use calxdp_policy::felix::parse_failsafe_string;
use calxdp_policy::node::{
    AllowAction, DenyAction, EndpointToHostAction, FelixConfig, FelixSettings, InterfaceMatch, LogRate, NftablesMode,
};

/// A `ConfigUpdate` parameter Felix itself would refuse; the message starts with the parameter's key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The accepted values, joined by ", ".
    #[error("{key}: '{value}' is not one of {options}")]
    NotOneOf { key: String, value: String, options: String },
    #[error("{key}: '{value}' is not a boolean")]
    NotBool { key: String, value: String },
    #[error("{key}: '{value}' is not a number in range")]
    NotNumber { key: String, value: String },
    /// A list or rate the policy crate's parser refused, with its reason.
    #[error("{key}: {detail}")]
    Invalid { key: String, detail: String },
}

/// What the emulator cannot say in a `ConfigUpdate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("BPFConntrackTimeouts has no ConfigUpdate form in the emulator")]
pub struct NoConfigForm;

fn one_of<T: Copy>(key: &str, value: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
    options.iter().find(|(name, _)| name.eq_ignore_ascii_case(value)).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        ConfigError::NotOneOf { key: key.to_string(), value: value.to_string(), options: names.join(", ") }
    })
}

/// Go's `strconv.ParseBool`, which Felix's bool parameters use.
fn go_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ConfigError::NotBool { key: key.to_string(), value: value.to_string() }),
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::NotNumber { key: key.to_string(), value: value.to_string() })
}

fn invalid(key: &str) -> impl Fn(String) -> ConfigError + '_ {
    move |detail| ConfigError::Invalid { key: key.to_string(), detail }
}

/// The settings a `ConfigUpdate.config` map sets.
pub fn settings(config: &BTreeMap<String, String>) -> Result<FelixSettings, ConfigError> {
    let mut s = FelixSettings::default();
    let deny = [("DROP", DenyAction::Drop), ("REJECT", DenyAction::Reject)];
    let allow = [("ACCEPT", AllowAction::Accept), ("RETURN", AllowAction::Return)];
    for (key, value) in config {
        let k = key.as_str();
        match key.to_ascii_lowercase().as_str() {
            "defaultendpointtohostaction" => {
                s.default_endpoint_to_host_action = Some(one_of(
                    k,
                    value,
                    &[
                        ("DROP", EndpointToHostAction::Drop),
                        ("RETURN", EndpointToHostAction::Return),
                        ("ACCEPT", EndpointToHostAction::Accept),
                    ],
                )?)
            }
            "failsafeinboundhostports" => s.failsafe_inbound = Some(parse_failsafe_string(value).map_err(invalid(k))?),
            "failsafeoutboundhostports" => {
                s.failsafe_outbound = Some(parse_failsafe_string(value).map_err(invalid(k))?)
            }
            "disableconntrackinvalidcheck" => s.disable_conntrack_invalid_check = Some(go_bool(k, value)?),
            "allowvxlanpacketsfromworkloads" => s.allow_vxlan_from_workloads = Some(go_bool(k, value)?),
            "allowipippacketsfromworkloads" => s.allow_ipip_from_workloads = Some(go_bool(k, value)?),
            "vxlanport" => s.vxlan_port = Some(number(k, value)?),
            "logprefix" => s.log_prefix = Some(value.clone()),
            "logactionratelimit" => {
                s.log_rate_limit = Some(LogRate::parse(value).map_err(|e| invalid(k)(e.to_string()))?)
            }
            "logactionratelimitburst" => s.log_rate_burst = Some(number(k, value)?),
            "bpfmapsizeconntrack" => s.conntrack_capacity = Some(number(k, value)?),
            "interfaceexclude" => s.interface_exclude = Some(InterfaceMatch::parse_list(value).map_err(invalid(k))?),
            "iptablesfilterdenyaction" => s.iptables_filter_deny_action = Some(one_of(k, value, &deny)?),
            "nftablesfilterdenyaction" => s.nftables_filter_deny_action = Some(one_of(k, value, &deny)?),
            "iptablesfilterallowaction" => s.iptables_filter_allow_action = Some(one_of(k, value, &allow)?),
            "iptablesmangleallowaction" => s.iptables_mangle_allow_action = Some(one_of(k, value, &allow)?),
            "nftablesfilterallowaction" => s.nftables_filter_allow_action = Some(one_of(k, value, &allow)?),
            "nftablesmangleallowaction" => s.nftables_mangle_allow_action = Some(one_of(k, value, &allow)?),
            "nftablesmode" => {
                s.nftables_mode = Some(one_of(
                    k,
                    value,
                    &[
                        ("Enabled", NftablesMode::Enabled),
                        ("Disabled", NftablesMode::Disabled),
                        ("Auto", NftablesMode::Auto),
                    ],
                )?)
            }
            _ => {}
        }
    }
    Ok(s)
}

/// The parameters that make `config` differ from Felix's defaults, as Felix would send them — what the
/// emulator puts in its `ConfigUpdate`. `BPFConntrackTimeouts` has no string form here: a configuration that
/// changes it is refused.
pub fn to_strings(config: &FelixConfig) -> Result<BTreeMap<String, String>, NoConfigForm> {
    let d = FelixConfig::default();
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        out.insert(k.to_string(), v);
    };
    let failsafes = |l: &[calxdp_policy::node::Failsafe]| -> String {
        if l.is_empty() {
            return "none".into();
        }
        l.iter()
            .map(|f| {
                let p = if f.protocol == calxdp_policy::resource::Protocol::UDP { "udp" } else { "tcp" };
                match f.net {
                    Some(n) if n.family() == calxdp_policy::net::IpFamily::V6 => format!("{p}:[{n}]:{}", f.port),
                    Some(n) => format!("{p}:{n}:{}", f.port),
                    None => format!("{p}:{}", f.port),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let deny = |a: DenyAction| if a == DenyAction::Drop { "Drop" } else { "Reject" }.to_string();
    let allow = |a: AllowAction| if a == AllowAction::Accept { "Accept" } else { "Return" }.to_string();
    if config.default_endpoint_to_host_action != d.default_endpoint_to_host_action {
        // Raw strings are not normalised: Felix passes on whatever case the source used.
        let v = match config.default_endpoint_to_host_action {
            EndpointToHostAction::Drop => "DROP",
            EndpointToHostAction::Return => "Return",
            EndpointToHostAction::Accept => "accept",
        };
        put("DefaultEndpointToHostAction", v.into());
    }
    if config.failsafe_inbound != d.failsafe_inbound {
        put("FailsafeInboundHostPorts", failsafes(&config.failsafe_inbound));
    }
    if config.failsafe_outbound != d.failsafe_outbound {
        put("FailsafeOutboundHostPorts", failsafes(&config.failsafe_outbound));
    }
    if config.disable_conntrack_invalid_check != d.disable_conntrack_invalid_check {
        put("DisableConntrackInvalidCheck", config.disable_conntrack_invalid_check.to_string());
    }
    if config.allow_vxlan_from_workloads != d.allow_vxlan_from_workloads {
        put("AllowVXLANPacketsFromWorkloads", config.allow_vxlan_from_workloads.to_string());
    }
    if config.allow_ipip_from_workloads != d.allow_ipip_from_workloads {
        put("AllowIPIPPacketsFromWorkloads", config.allow_ipip_from_workloads.to_string());
    }
    if config.vxlan_port != d.vxlan_port {
        put("VXLANPort", config.vxlan_port.to_string());
    }
    if config.log_prefix != d.log_prefix {
        put("LogPrefix", config.log_prefix.clone());
    }
    if config.log_rate_limit != d.log_rate_limit {
        if let Some(r) = config.log_rate_limit {
            put("LogActionRateLimit", r.to_string());
        }
    }
    if config.log_rate_burst != d.log_rate_burst {
        put("LogActionRateLimitBurst", config.log_rate_burst.to_string());
    }
    if config.conntrack_capacity != d.conntrack_capacity {
        put("BPFMapSizeConntrack", config.conntrack_capacity.to_string());
    }
    if config.interface_exclude != d.interface_exclude {
        let v: Vec<&str> = config.interface_exclude.iter().map(|i| i.text()).collect();
        put("InterfaceExclude", v.join(","));
    }
    let denies = [
        ("IptablesFilterDenyAction", config.iptables_filter_deny_action, d.iptables_filter_deny_action),
        ("NftablesFilterDenyAction", config.nftables_filter_deny_action, d.nftables_filter_deny_action),
    ];
    for (k, v, dv) in denies {
        if v != dv {
            put(k, deny(v));
        }
    }
    let allows = [
        ("IptablesFilterAllowAction", config.iptables_filter_allow_action, d.iptables_filter_allow_action),
        ("IptablesMangleAllowAction", config.iptables_mangle_allow_action, d.iptables_mangle_allow_action),
        ("NftablesFilterAllowAction", config.nftables_filter_allow_action, d.nftables_filter_allow_action),
        ("NftablesMangleAllowAction", config.nftables_mangle_allow_action, d.nftables_mangle_allow_action),
    ];
    for (k, v, dv) in allows {
        if v != dv {
            put(k, allow(v));
        }
    }
    if config.nftables_mode != d.nftables_mode {
        let v = match config.nftables_mode {
            NftablesMode::Enabled => "Enabled",
            NftablesMode::Disabled => "Disabled",
            NftablesMode::Auto => "Auto",
        };
        put("NFTablesMode", v.into());
    }
    if config.conntrack_timeouts != d.conntrack_timeouts {
        return Err(NoConfigForm);
    }
    Ok(out)
}

/// `base` with the stream's parameters over it.
pub fn apply(base: &FelixConfig, config: &BTreeMap<String, String>) -> Result<FelixConfig, ConfigError> {
    let mut c = base.clone();
    c.apply(&settings(config)?);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        let c = FelixConfig {
            default_endpoint_to_host_action: EndpointToHostAction::Accept,
            failsafe_inbound: parse_failsafe_string("tcp:22,udp:68,tcp:10.0.0.0/8:80,tcp:[fd00::/64]:443").unwrap(),
            failsafe_outbound: Vec::new(),
            log_prefix: "calxdp %t".into(),
            iptables_filter_deny_action: DenyAction::Reject,
            interface_exclude: InterfaceMatch::parse_list("eth9,/^veth/").unwrap(),
            nftables_mode: NftablesMode::Disabled,
            ..FelixConfig::default()
        };
        let strings = to_strings(&c).unwrap();
        assert_eq!(strings["FailsafeOutboundHostPorts"], "none");
        assert_eq!(apply(&FelixConfig::default(), &strings).unwrap(), c);
        // Felix's other parameters are ignored; a value Felix refuses is not.
        let mut m = BTreeMap::new();
        m.insert("RouteRefreshInterval".to_string(), "90".to_string());
        assert!(settings(&m).is_ok());
        m.insert("DefaultEndpointToHostAction".to_string(), "Maybe".to_string());
        assert!(settings(&m).unwrap_err().to_string().contains("DefaultEndpointToHostAction"));
    }
}
