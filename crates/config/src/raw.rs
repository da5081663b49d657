//! The config as written: serde structs with `deny_unknown_fields`, whose
//! scalar fields are checked while they are read (so serde_yaml knows their
//! position), converted once into the validated types by `validate`.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::duration::{parse_duration, DURATION_FORM};
use super::values::{check_route_name, parse_listen_addr, ValueError};
use super::{Balance, Forwarding, IpNet, NamePattern, ProxyProtocol, UpstreamAddr, Workers};

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with at least `listeners` and `routes`"
)]
pub(crate) struct RawConfig {
    pub(crate) listeners: NonEmpty<RawListener>,
    #[serde(default)]
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) timeouts: Option<RawTimeouts>,
    #[serde(default)]
    pub(crate) limits: Option<RawLimits>,
    pub(crate) routes: NonEmpty<RawRoute>,
    #[serde(default)]
    pub(crate) default_route: Option<String>,
    #[serde(default)]
    pub(crate) watch_config: Option<bool>,
    #[serde(default)]
    pub(crate) forwarding: Option<Forwarding>,
    #[serde(default)]
    pub(crate) workers: Option<Parsed<WorkerCount>>,
    #[serde(default)]
    pub(crate) discovery: Option<RawDiscovery>,
}

/// `discovery`: Marathon and the Mesos master.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "discovery sources: a mapping with `marathon` and/or `mesos`"
)]
pub(crate) struct RawDiscovery {
    #[serde(default)]
    pub(crate) marathon: Option<RawMarathon>,
    #[serde(default)]
    pub(crate) mesos: Option<RawMesos>,
}

/// `discovery.mesos`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "Mesos master settings: a mapping with `urls` and optionally `auth`, `ca_file`, `resync` and `required`"
)]
pub(crate) struct RawMesos {
    pub(crate) urls: NonEmpty<Parsed<MesosUrl>>,
    #[serde(default)]
    pub(crate) auth: Option<RawDiscoveryAuth>,
    #[serde(default)]
    pub(crate) ca_file: Option<String>,
    #[serde(default)]
    pub(crate) resync: Option<Parsed<NonZeroDuration>>,
    #[serde(default)]
    pub(crate) required: Option<bool>,
}

/// A route's `mesos_tasks` (an Edge-LB pool's backend selector).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "Mesos tasks: a mapping with `framework`, `task_name_pattern` and `port_name`"
)]
pub(crate) struct RawMesosTasks {
    pub(crate) framework: Parsed<FrameworkName>,
    pub(crate) task_name_pattern: Parsed<TaskNamePattern>,
    pub(crate) port_name: Parsed<PortName>,
}

/// `discovery.marathon`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "Marathon settings: a mapping with `urls` and optionally `auth`, `ca_file`, `resync`, \
                 `stall_timeout`, `required`, `label_group`, `label_server_names_allowed` and \
                 `marathon_lb_labels`"
)]
pub(crate) struct RawMarathon {
    pub(crate) urls: NonEmpty<Parsed<MarathonUrl>>,
    #[serde(default)]
    pub(crate) auth: Option<RawDiscoveryAuth>,
    #[serde(default)]
    pub(crate) ca_file: Option<String>,
    #[serde(default)]
    pub(crate) resync: Option<Parsed<NonZeroDuration>>,
    #[serde(default)]
    pub(crate) stall_timeout: Option<Parsed<NonZeroDuration>>,
    #[serde(default)]
    pub(crate) required: Option<bool>,
    #[serde(default)]
    pub(crate) label_group: Option<Parsed<LabelGroup>>,
    #[serde(default)]
    pub(crate) label_server_names_allowed: Option<Vec<Parsed<NamePattern>>>,
    #[serde(default)]
    pub(crate) marathon_lb_labels: Option<bool>,
}

/// A discovery source's `auth` (the same for every source: Marathon and
/// Mesos both sit behind DC/OS's Admin Router): exactly one of
/// `token_file` and `service_account`, checked in `validate`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "DC/OS credentials: a mapping with `token_file` or `service_account`"
)]
pub(crate) struct RawDiscoveryAuth {
    #[serde(default)]
    pub(crate) token_file: Option<String>,
    #[serde(default)]
    pub(crate) service_account: Option<RawServiceAccount>,
}

/// `auth.service_account`: a DC/OS service account that logs in with its
/// private key.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a DC/OS service account: a mapping with `uid`, `private_key_file` and `login_url`"
)]
pub(crate) struct RawServiceAccount {
    pub(crate) uid: String,
    pub(crate) private_key_file: String,
    pub(crate) login_url: Parsed<LoginUrl>,
}

/// A route's `marathon_app`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a Marathon app port: a mapping with `id` and one of `port_name` and `port_index`"
)]
pub(crate) struct RawMarathonApp {
    pub(crate) id: Parsed<MarathonAppId>,
    #[serde(default)]
    pub(crate) port_name: Option<String>,
    #[serde(default)]
    pub(crate) port_index: Option<Count>,
}

/// A listener: `"0.0.0.0:6443"` or `{address: ..., default_route: ...}`.
#[derive(Debug)]
pub(crate) enum RawListener {
    Plain(SocketAddr),
    Full(RawListenerMap),
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a listener: a mapping with `address` and optionally `default_route` and `accept_proxy_protocol`"
)]
pub(crate) struct RawListenerMap {
    pub(crate) address: Parsed<ListenAddr>,
    #[serde(default)]
    pub(crate) default_route: Option<String>,
    #[serde(default)]
    pub(crate) accept_proxy_protocol: Option<RawAcceptProxyProtocol>,
}

/// A listener's `accept_proxy_protocol`: the peers (load balancers) that
/// may send a PROXY protocol header, and whether they must.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "PROXY protocol settings: a mapping with `from` (networks) and optionally `required`"
)]
pub(crate) struct RawAcceptProxyProtocol {
    pub(crate) from: NonEmpty<Parsed<IpNet>>,
    #[serde(default)]
    pub(crate) required: Option<bool>,
}

impl<'de> Deserialize<'de> for RawListener {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawListener;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a listen address such as `0.0.0.0:6443`, or a mapping with `address` and `default_route`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawListener, E> {
                parse_listen_addr(v)
                    .map(RawListener::Plain)
                    .map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawListener, A::Error> {
                RawListenerMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawListener::Full)
            }
        }
        d.deserialize_any(V)
    }
}

/// The admin endpoint: `"127.0.0.1:9190"` or `{address: ..., allow_sources: [...]}`.
#[derive(Debug)]
pub(crate) enum RawAdmin {
    Plain(SocketAddr),
    Full(RawAdminMap),
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the admin endpoint: a mapping with `address` and optionally `allow_sources`"
)]
pub(crate) struct RawAdminMap {
    pub(crate) address: Parsed<ListenAddr>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) allow_sources: Option<NonEmpty<Parsed<IpNet>>>,
}

impl<'de> Deserialize<'de> for RawAdmin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAdmin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a listen address such as `127.0.0.1:9190`, or a mapping with `address` and `allow_sources`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAdmin, E> {
                parse_listen_addr(v).map(RawAdmin::Plain).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAdmin, A::Error> {
                RawAdminMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawAdmin::Full)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of `client_hello`, `connect`, `idle`, `accept_grace`, `drain` and `tcp_user_timeout` durations"
)]
pub(crate) struct RawTimeouts {
    pub(crate) client_hello: Option<Parsed<NonZeroDuration>>,
    pub(crate) connect: Option<Parsed<NonZeroDuration>>,
    pub(crate) idle: Option<Parsed<NonZeroDuration>>,
    pub(crate) accept_grace: Option<Parsed<AnyDuration>>,
    pub(crate) drain: Option<Parsed<NonZeroDuration>>,
    pub(crate) tcp_user_timeout: Option<Parsed<NonZeroDuration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `max_connections`, `max_client_hello_bytes`, `max_pending_hellos`, `max_pending_hellos_per_source` and `max_connections_per_source`"
)]
pub(crate) struct RawLimits {
    pub(crate) max_connections: Option<Count>,
    pub(crate) max_client_hello_bytes: Option<Count>,
    pub(crate) max_pending_hellos: Option<Count>,
    pub(crate) max_pending_hellos_per_source: Option<Count>,
    pub(crate) max_connections_per_source: Option<Count>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a route: a mapping with `name`, `server_names` and one of `upstreams`, `dcos_service`, `marathon_app` and `mesos_tasks`"
)]
pub(crate) struct RawRoute {
    pub(crate) name: Parsed<RouteName>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) server_names: Option<NonEmpty<Parsed<NamePattern>>>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) upstreams: Option<NonEmpty<Parsed<UpstreamAddr>>>,
    #[serde(default)]
    pub(crate) dcos_service: Option<Parsed<DcosService>>,
    #[serde(default)]
    pub(crate) marathon_app: Option<RawMarathonApp>,
    #[serde(default)]
    pub(crate) mesos_tasks: Option<RawMesosTasks>,
    #[serde(default)]
    pub(crate) balance: Option<Balance>,
    #[serde(default)]
    pub(crate) health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub(crate) outlier_detection: Option<RawOutlierDetection>,
    #[serde(default)]
    pub(crate) proxy_protocol: Option<ProxyProtocol>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) allow_sources: Option<NonEmpty<Parsed<IpNet>>>,
}

/// `health_check`: `true`/`false`, or a mapping whose missing keys default.
#[derive(Debug)]
pub(crate) enum RawHealthCheck {
    Enabled(bool),
    Map(Box<RawHealthCheckMap>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "health check settings: a mapping with `enabled`, `kind`, `interval`, `timeout`, `unhealthy_after`, `healthy_after` and, for https and kubernetes checks, `server_name`, `ca_file`, ..."
)]
pub(crate) struct RawHealthCheckMap {
    pub(crate) enabled: Option<bool>,
    #[serde(default)]
    pub(crate) kind: Option<RawCheckKind>,
    pub(crate) interval: Option<Parsed<NonZeroDuration>>,
    pub(crate) timeout: Option<Parsed<NonZeroDuration>>,
    pub(crate) unhealthy_after: Option<Count>,
    pub(crate) healthy_after: Option<Count>,
    #[serde(default)]
    pub(crate) path: Option<Parsed<HttpPath>>,
    #[serde(default)]
    pub(crate) server_name: Option<Parsed<CheckServerName>>,
    #[serde(default)]
    pub(crate) ca_file: Option<Parsed<FilePath>>,
    #[serde(default)]
    pub(crate) insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub(crate) client_certificate: Option<Parsed<FilePath>>,
    #[serde(default)]
    pub(crate) client_key: Option<Parsed<FilePath>>,
    #[serde(default)]
    pub(crate) token_file: Option<Parsed<FilePath>>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) expect_status: Option<NonEmpty<Count>>,
}

/// `health_check.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawCheckKind {
    Tcp,
    Https,
    Kubernetes,
}

/// `outlier_detection`: `true`/`false`, or a mapping whose missing keys
/// default.
#[derive(Debug)]
pub(crate) enum RawOutlierDetection {
    Enabled(bool),
    Map(RawOutlierMap),
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "outlier detection settings: a mapping with `enabled`, `consecutive_failures`, `base_ejection`, `max_ejected_percent`"
)]
pub(crate) struct RawOutlierMap {
    pub(crate) enabled: Option<bool>,
    pub(crate) consecutive_failures: Option<Count>,
    pub(crate) base_ejection: Option<Parsed<NonZeroDuration>>,
    pub(crate) max_ejected_percent: Option<Count>,
}

impl<'de> Deserialize<'de> for RawOutlierDetection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawOutlierDetection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`false` to turn outlier detection off, or a mapping of its settings")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawOutlierDetection, E> {
                Ok(RawOutlierDetection::Enabled(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawOutlierDetection, E> {
                Ok(RawOutlierDetection::Map(RawOutlierMap::default()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawOutlierDetection, A::Error> {
                RawOutlierMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawOutlierDetection::Map)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawHealthCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHealthCheck;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`false` to turn health checks off, or a mapping of their settings")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawHealthCheck, E> {
                Ok(RawHealthCheck::Enabled(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawHealthCheck, E> {
                Ok(RawHealthCheck::Map(Box::default()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawHealthCheck, A::Error> {
                RawHealthCheckMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|m| RawHealthCheck::Map(Box::new(m)))
            }
        }
        d.deserialize_any(V)
    }
}

/// For optional lists: a key written with no value is an empty list (an
/// error), not an absent key; only leaving the key out takes the default.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<NonEmpty<T>>, D::Error> {
    NonEmpty::deserialize(d).map(Some)
}

/// A whole number, not negative.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Count(pub(crate) u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                u64::try_from(v)
                    .map(Count)
                    .map_err(|_| E::custom(format!("`{v}` is negative: expected a whole number")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list that must not be empty (`[]` or a key with no value).
#[derive(Debug)]
pub(crate) struct NonEmpty<T>(pub(crate) Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NonEmpty<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = NonEmpty<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty<T>, A::Error> {
                // No size hint: a hostile length must not become an allocation.
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                if items.is_empty() {
                    // The error is raised inside serde_yaml's handling of
                    // this node, so it carries the list's position.
                    return Err(de::Error::custom(
                        "the list is empty: give at least one item, or leave the key out where it is optional",
                    ));
                }
                Ok(NonEmpty(items))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// A scalar checked while it is read (inside serde_yaml's handling of the
/// node, so errors carry its position), by the [`Scalar`] impl of `T`.
#[derive(Debug)]
pub(crate) struct Parsed<T: Scalar>(pub(crate) T::Output);

/// How to read one kind of scalar.
pub(crate) trait Scalar {
    type Output;
    /// What is expected, for type errors ("expected ...").
    const EXPECTING: &'static str;
    /// Reads a string (serde_yaml hands every plain scalar over as one when
    /// asked for a string).
    fn parse(s: &str) -> Result<Self::Output, ValueError>;
    /// Whether to ask serde_yaml for any type rather than a string, so that
    /// numbers reach [`Scalar::number`].
    const ANY: bool = false;
    /// Reads a YAML number (only with [`Scalar::ANY`]).
    fn number(shown: &str) -> Result<Self::Output, ValueError> {
        Err(ValueError::new(format!(
            "invalid type: number `{shown}`, expected {}",
            Self::EXPECTING
        )))
    }
}

impl<'de, T: Scalar> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: Scalar> V<T> {
            fn done<E: de::Error>(r: Result<T::Output, ValueError>) -> Result<Parsed<T>, E> {
                r.map(Parsed).map_err(E::custom)
            }
        }
        impl<T: Scalar> Visitor<'_> for V<T> {
            type Value = Parsed<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed<T>, E> {
                Self::done(T::parse(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Parsed<T>, E> {
                Self::done(T::number(&v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Parsed<T>, E> {
                Self::done(T::number(&v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Parsed<T>, E> {
                Self::done(T::number(&v.to_string()))
            }
        }
        if T::ANY {
            d.deserialize_any(V(PhantomData))
        } else {
            d.deserialize_str(V(PhantomData))
        }
    }
}

/// `IP:PORT` to listen on.
#[derive(Debug)]
pub(crate) struct ListenAddr;
impl Scalar for ListenAddr {
    type Output = SocketAddr;
    const EXPECTING: &'static str = "a listen address such as `0.0.0.0:6443` or `[::]:6443`";
    fn parse(s: &str) -> Result<SocketAddr, ValueError> {
        parse_listen_addr(s)
    }
}

/// A duration, zero allowed (`0s`: off).
#[derive(Debug)]
pub(crate) struct AnyDuration;
impl Scalar for AnyDuration {
    type Output = Duration;
    const EXPECTING: &'static str = "a duration such as `5s` (`0s`: off)";
    const ANY: bool = true;
    fn parse(s: &str) -> Result<Duration, ValueError> {
        parse_duration(s)
    }
}

/// `workers`: `auto` or a whole number from 1 to [`Workers::MAX`].
#[derive(Debug)]
pub(crate) struct WorkerCount;
impl Scalar for WorkerCount {
    type Output = Workers;
    const EXPECTING: &'static str = "`auto` or a number of threads from 1 to 256";
    const ANY: bool = true;
    fn parse(s: &str) -> Result<Workers, ValueError> {
        if s == "auto" {
            return Ok(Workers::Auto);
        }
        match s.parse::<u64>() {
            Ok(n) => Self::number(&n.to_string()),
            Err(_) => Err(ValueError::new(format!(
                "`{s}`: expected {}",
                Self::EXPECTING
            ))),
        }
    }
    fn number(shown: &str) -> Result<Workers, ValueError> {
        match shown.parse::<u16>() {
            Ok(n) if (1..=Workers::MAX).contains(&n) => Ok(Workers::Count(n)),
            _ => Err(ValueError::new(format!(
                "`{shown}` workers: expected `auto` or a number from 1 to {}",
                Workers::MAX
            ))),
        }
    }
}

/// A duration greater than zero.
#[derive(Debug)]
pub(crate) struct NonZeroDuration;
impl Scalar for NonZeroDuration {
    type Output = Duration;
    const EXPECTING: &'static str = "a duration such as `5s`";
    const ANY: bool = true;
    fn parse(s: &str) -> Result<Duration, ValueError> {
        let d = parse_duration(s)?;
        if d.is_zero() {
            return Err(ValueError::new(format!(
                "`{s}`: this duration must be greater than zero"
            )));
        }
        Ok(d)
    }
    fn number(shown: &str) -> Result<Duration, ValueError> {
        Err(ValueError::new(format!(
            "`{shown}` has no unit: expected {DURATION_FORM}"
        )))
    }
}

/// A route name.
#[derive(Debug)]
pub(crate) struct RouteName;
impl Scalar for RouteName {
    type Output = String;
    const EXPECTING: &'static str = "a route name made of a-z, 0-9, `_` and `-`";
    fn parse(s: &str) -> Result<String, ValueError> {
        check_route_name(s).map(|()| s.to_owned())
    }
}

impl Scalar for NamePattern {
    type Output = NamePattern;
    const EXPECTING: &'static str = "a server name such as `api.example.com` or `*.example.com`";
    fn parse(s: &str) -> Result<NamePattern, ValueError> {
        s.parse()
    }
}

impl Scalar for UpstreamAddr {
    type Output = UpstreamAddr;
    const EXPECTING: &'static str = "an upstream `host:port` such as `10.0.4.11:6443`";
    fn parse(s: &str) -> Result<UpstreamAddr, ValueError> {
        s.parse()
    }
}

impl Scalar for IpNet {
    type Output = IpNet;
    const EXPECTING: &'static str = "a network such as `10.0.0.0/8`";
    fn parse(s: &str) -> Result<IpNet, ValueError> {
        s.parse()
    }
}

/// A label group (`SNIROUTE_GROUP`'s value): 1 to 63 of `a-z`, `A-Z`,
/// `0-9`, `_`, `-` and `.`, as label values that name groups are written.
#[derive(Debug)]
pub(crate) struct LabelGroup;
impl Scalar for LabelGroup {
    type Output = String;
    const EXPECTING: &'static str = "a label group such as `external`";
    fn parse(s: &str) -> Result<String, ValueError> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(s.to_owned())
        } else {
            Err(ValueError::new(format!(
                "`{}` is not a label group: 1 to 63 of a-z, A-Z, 0-9, `_`, `-` and `.`",
                s.escape_debug()
            )))
        }
    }
}

/// An `http[s]://host[:port][/path]` URL without user, query or fragment.
fn parse_http_url(s: &str, example: &str) -> Result<String, ValueError> {
    let bad = |why: &str| Err(ValueError::new(format!("`{s}`: {why}")));
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return bad(&format!(
            "expected an http or https URL such as `{example}`"
        ));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains(['@', '?', '#']) || path.contains(['?', '#']) {
        return bad("a discovery URL has no user, query or fragment");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, after)) if h.parse::<std::net::Ipv6Addr>().is_ok() => {
                (h, after.strip_prefix(':'))
            }
            _ => return bad("not a valid IPv6 address in brackets"),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return bad("the host is missing or not a valid name");
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return bad(&format!("`{p}` is not a port"));
        }
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '%' | '"' | '<' | '>' | '\\'))
    {
        return bad("the path may hold plain characters only");
    }
    Ok(s.to_owned())
}

/// A Marathon URL: `http[s]://host[:port][/prefix]` (https needs the
/// source's `ca_file`, checked in `validate`).
#[derive(Debug)]
pub(crate) struct MarathonUrl;
impl Scalar for MarathonUrl {
    type Output = String;
    const EXPECTING: &'static str = "a Marathon URL such as `http://marathon.mesos:8080`";
    fn parse(s: &str) -> Result<String, ValueError> {
        parse_http_url(s, "http://marathon.mesos:8080")
    }
}

/// A Mesos master URL: `http[s]://host[:port][/prefix]`, as
/// [`MarathonUrl`].
#[derive(Debug)]
pub(crate) struct MesosUrl;
impl Scalar for MesosUrl {
    type Output = String;
    const EXPECTING: &'static str = "a Mesos master URL such as `http://leader.mesos:5050`";
    fn parse(s: &str) -> Result<String, ValueError> {
        parse_http_url(s, "http://leader.mesos:5050")
    }
}

/// A Mesos framework's name (`dev/kubernetes01`): not empty, no control
/// characters.
#[derive(Debug)]
pub(crate) struct FrameworkName;
impl Scalar for FrameworkName {
    type Output = String;
    const EXPECTING: &'static str = "a Mesos framework name such as `dev/kubernetes01`";
    fn parse(s: &str) -> Result<String, ValueError> {
        if s.trim().is_empty() || s.chars().any(char::is_control) {
            return Err(ValueError::new(format!(
                "`{}` is not a framework name: give it as Mesos shows it, such as `dev/kubernetes01`",
                s.escape_debug()
            )));
        }
        Ok(s.to_owned())
    }
}

/// A regular expression searched in Mesos task names.
#[derive(Debug)]
pub(crate) struct TaskNamePattern;
impl Scalar for TaskNamePattern {
    type Output = String;
    const EXPECTING: &'static str =
        "a regular expression searched in task names, such as `kube-control-plane`";
    fn parse(s: &str) -> Result<String, ValueError> {
        regex::RegexBuilder::new(s)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                let detail = match e {
                    regex::Error::Syntax(m) => m.lines().last().unwrap_or_default().to_owned(),
                    other => other.to_string(),
                };
                ValueError::new(format!(
                    "`{}` is not a regular expression: {detail}",
                    s.escape_debug()
                ))
            })?;
        Ok(s.to_owned())
    }
}

/// A port's name in a Mesos task's `discovery.ports`.
#[derive(Debug)]
pub(crate) struct PortName;
impl Scalar for PortName {
    type Output = String;
    const EXPECTING: &'static str = "a port name such as `apiserver`";
    fn parse(s: &str) -> Result<String, ValueError> {
        if s.trim().is_empty() || s.chars().any(char::is_control) {
            return Err(ValueError::new("port_name is empty"));
        }
        Ok(s.to_owned())
    }
}

/// A DC/OS login URL (`https://leader.mesos/acs/api/v1/auth/login`).
#[derive(Debug)]
pub(crate) struct LoginUrl;
impl Scalar for LoginUrl {
    type Output = String;
    const EXPECTING: &'static str =
        "a DC/OS login URL such as `https://leader.mesos/acs/api/v1/auth/login`";
    fn parse(s: &str) -> Result<String, ValueError> {
        parse_http_url(s, "https://leader.mesos/acs/api/v1/auth/login")
    }
}

/// A Marathon app id: absolute, segments of `a-z`, `0-9`, `-` and `.`;
/// the output has no trailing slash.
#[derive(Debug)]
pub(crate) struct MarathonAppId;
impl Scalar for MarathonAppId {
    type Output = String;
    const EXPECTING: &'static str = "a Marathon app id such as `/prod/web`";
    fn parse(s: &str) -> Result<String, ValueError> {
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        let segments = trimmed.strip_prefix('/').map(|r| r.split('/'));
        let valid = segments.is_some_and(|mut segs| {
            segs.all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    })
            })
        });
        if !valid {
            return Err(ValueError::new(format!(
                "`{s}` is not a Marathon app id: an absolute path such as `/prod/web`, \
                 each part made of a-z, 0-9, `-` and `.`"
            )));
        }
        Ok(trimmed.to_owned())
    }
}

/// A DC/OS service path; the output keeps it as written plus its VIP name.
#[derive(Debug)]
pub(crate) struct DcosService;
impl Scalar for DcosService {
    type Output = (String, clienthello::ServerName);
    const EXPECTING: &'static str = "a DC/OS service path such as `dev/kubernetes01`";
    fn parse(s: &str) -> Result<Self::Output, ValueError> {
        super::values::dcos_vip(s).map(|vip| (s.to_owned(), vip))
    }
}

/// An HTTP request path for health checks: starts with `/`, printable
/// ASCII without spaces.
#[derive(Debug)]
pub(crate) struct HttpPath;
impl Scalar for HttpPath {
    type Output = String;
    const EXPECTING: &'static str = "a request path such as `/healthz`";
    fn parse(s: &str) -> Result<String, ValueError> {
        if !s.starts_with('/') || s.len() > 1024 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValueError::new(format!(
                "`{}` is not a request path: it starts with `/` and holds printable ASCII without spaces",
                s.escape_debug()
            )));
        }
        Ok(s.to_owned())
    }
}

/// The server name a health check sends and verifies.
#[derive(Debug)]
pub(crate) struct CheckServerName;
impl Scalar for CheckServerName {
    type Output = clienthello::ServerName;
    const EXPECTING: &'static str = "a server name such as `apiserver.example.com`";
    fn parse(s: &str) -> Result<clienthello::ServerName, ValueError> {
        s.parse().map_err(|e| {
            ValueError::new(format!("invalid server name `{}`: {e}", s.escape_debug()))
        })
    }
}

/// A file path (checked for content by `validate`).
#[derive(Debug)]
pub(crate) struct FilePath;
impl Scalar for FilePath {
    type Output = std::path::PathBuf;
    const EXPECTING: &'static str = "a file path";
    fn parse(s: &str) -> Result<std::path::PathBuf, ValueError> {
        if s.is_empty() || s.contains('\0') {
            return Err(ValueError::new(
                "the file path is empty or holds a NUL byte",
            ));
        }
        Ok(std::path::PathBuf::from(s))
    }
}
