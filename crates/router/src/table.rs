//! The routing table: from a ClientHello's server name to a route.
//!
//! Built once per config generation and never changed, so connections read
//! it without locks. A lookup is one hash probe for the exact name, then one
//! probe per dot of the name against the wildcard suffixes, leftmost dot
//! first, so the first hit is the longest (most specific) wildcard. Nothing
//! is allocated per lookup.

use std::collections::HashMap;

use config::{Config, NamePattern};

/// Index of a route in [`Config::routes`].
pub type RouteId = usize;

/// How a connection was matched to its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchKind {
    /// The server name is one of the route's exact names.
    Exact,
    /// The server name ends in one of the route's wildcard suffixes.
    Wildcard,
    /// No SNI, or no route claims the name: the default route.
    Default,
}

impl MatchKind {
    /// A stable label for logs and metrics: `exact`, `wildcard`, `default`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Wildcard => "wildcard",
            Self::Default => "default",
        }
    }
}

/// Server names and defaults of one config generation.
#[derive(Clone, Debug)]
pub struct RouteTable {
    /// Exact names, normalised.
    exact: HashMap<Box<str>, RouteId>,
    /// Wildcard suffixes: `*.example.com` is stored as `example.com`.
    wildcard: HashMap<Box<str>, RouteId>,
    /// Route names.
    by_name: HashMap<Box<str>, RouteId>,
    /// The global default route.
    default: Option<RouteId>,
    /// Each listener's default: its own, else the global one.
    listener_defaults: Vec<Option<RouteId>>,
}

impl RouteTable {
    /// Builds the table of `config`. A validated config claims each name
    /// once; should a hand-built one not, the first route wins, and
    /// default routes that name no route are ignored.
    pub fn new(config: &Config) -> RouteTable {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut by_name = HashMap::new();
        for (id, route) in config.routes.iter().enumerate() {
            by_name.entry(route.name.as_str().into()).or_insert(id);
            for pattern in &route.server_names {
                let (map, name) = match pattern {
                    NamePattern::Exact(n) => (&mut exact, n),
                    NamePattern::Wildcard(n) => (&mut wildcard, n),
                };
                map.entry(name.as_str().into()).or_insert(id);
            }
        }
        let find = |name: &Option<String>| name.as_deref().and_then(|n| by_name.get(n).copied());
        let default = find(&config.default_route);
        let listener_defaults = config
            .listeners
            .iter()
            .map(|l| find(&l.default_route).or(default))
            .collect();
        RouteTable {
            exact,
            wildcard,
            by_name,
            default,
            listener_defaults,
        }
    }

    /// The route for `server_name` (already normalised: lower case, no
    /// trailing dot, as [`clienthello::ServerName`] gives it): an exact name
    /// first, else the longest matching wildcard, else `listener_default`
    /// (what [`RouteTable::listener_default`] gives for the connection's
    /// listener), else the global default. `None` when nothing applies: the
    /// connection is refused.
    pub fn lookup(
        &self,
        server_name: Option<&str>,
        listener_default: Option<RouteId>,
    ) -> Option<(RouteId, MatchKind)> {
        if let Some(name) = server_name {
            if let Some(&id) = self.exact.get(name) {
                return Some((id, MatchKind::Exact));
            }
            if !self.wildcard.is_empty() {
                // `a.b.example.com` tries `b.example.com`, then
                // `example.com`, then `com`: longest suffix first.
                for (i, b) in name.bytes().enumerate() {
                    if b == b'.' {
                        if let Some(&id) = self.wildcard.get(&name[i + 1..]) {
                            return Some((id, MatchKind::Wildcard));
                        }
                    }
                }
            }
        }
        listener_default
            .or(self.default)
            .map(|id| (id, MatchKind::Default))
    }

    /// The id of the route called `name`.
    pub fn route_id(&self, name: &str) -> Option<RouteId> {
        self.by_name.get(name).copied()
    }

    /// The default route of listener `listener_index` (its index in
    /// [`Config::listeners`]): its own `default_route`, else the global one.
    pub fn listener_default(&self, listener_index: usize) -> Option<RouteId> {
        self.listener_defaults
            .get(listener_index)
            .copied()
            .unwrap_or(self.default)
    }

    /// The global default route.
    pub fn default_route(&self) -> Option<RouteId> {
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    const ROUTES: &str = r#"
listeners:
  - "127.0.0.1:6443"
  - {address: "[::1]:6443", default_route: wild}
  - "127.0.0.1:7443"
routes:
  - name: exact
    server_names: ["api.example.com", "API.Other.Example.", "*.other.example"]
    upstreams: ["10.0.0.1:6443"]
  - name: wild
    server_names: ["*.Example.COM"]
    upstreams: ["10.0.0.2:6443"]
  - name: deeper
    server_names: ["*.staging.example.com"]
    upstreams: ["10.0.0.3:6443"]
"#;

    fn table(extra: &str) -> RouteTable {
        RouteTable::new(&config(&format!("{ROUTES}{extra}")))
    }

    #[test]
    fn exact_beats_wildcard() {
        let t = table("");
        assert_eq!(
            t.lookup(Some("api.example.com"), None),
            Some((0, MatchKind::Exact))
        );
        assert_eq!(
            t.lookup(Some("web.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
        // An exact name beats the same route's or another's wildcard.
        assert_eq!(
            t.lookup(Some("api.other.example"), None),
            Some((0, MatchKind::Exact))
        );
        assert_eq!(
            t.lookup(Some("x.other.example"), None),
            Some((0, MatchKind::Wildcard))
        );
    }

    #[test]
    fn wildcards_match_any_depth_but_not_the_bare_suffix() {
        let t = table("");
        assert_eq!(
            t.lookup(Some("a.b.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
        assert_eq!(
            t.lookup(Some("a.b.c.d.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
        assert_eq!(t.lookup(Some("example.com"), None), None);
        assert_eq!(t.lookup(Some("com"), None), None);
        assert_eq!(t.lookup(Some("badexample.com"), None), None);
        assert_eq!(t.lookup(Some(""), None), None);
        assert_eq!(t.lookup(Some("."), None), None);
        assert_eq!(t.lookup(Some("x."), None), None);
    }

    #[test]
    fn longest_wildcard_wins() {
        let t = table("");
        assert_eq!(
            t.lookup(Some("x.staging.example.com"), None),
            Some((2, MatchKind::Wildcard))
        );
        assert_eq!(
            t.lookup(Some("a.b.staging.example.com"), None),
            Some((2, MatchKind::Wildcard))
        );
        // `staging.example.com` itself is only under `*.example.com`.
        assert_eq!(
            t.lookup(Some("staging.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
    }

    #[test]
    fn config_names_are_normalised_and_lookups_take_normalised_names() {
        let t = table("");
        // Written `API.Other.Example.` and `*.Example.COM`.
        assert_eq!(
            t.lookup(Some("api.other.example"), None),
            Some((0, MatchKind::Exact))
        );
        assert_eq!(
            t.lookup(Some("www.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
        // What a ClientHello gives, normalised by the same code as the config.
        let sni = clienthello::ServerName::parse(b"API.Example.COM.").unwrap();
        assert_eq!(
            t.lookup(Some(sni.as_str()), None),
            Some((0, MatchKind::Exact))
        );
    }

    #[test]
    fn defaults() {
        // No default anywhere: nothing.
        let t = table("");
        assert_eq!(t.lookup(None, None), None);
        assert_eq!(t.lookup(Some("nope.test"), None), None);
        assert_eq!(t.listener_default(0), None);
        // The [::1] listener names its own.
        assert_eq!(t.listener_default(1), Some(1));
        assert_eq!(t.listener_default(99), None);

        let t = table("default_route: deeper\n");
        assert_eq!(t.default_route(), Some(2));
        assert_eq!(t.listener_default(0), Some(2));
        assert_eq!(
            t.listener_default(1),
            Some(1),
            "the listener's own beats the global"
        );
        assert_eq!(t.listener_default(2), Some(2));
        assert_eq!(t.listener_default(99), Some(2));
        assert_eq!(
            t.lookup(None, t.listener_default(0)),
            Some((2, MatchKind::Default))
        );
        assert_eq!(
            t.lookup(None, t.listener_default(1)),
            Some((1, MatchKind::Default))
        );
        assert_eq!(
            t.lookup(Some("nope.test"), t.listener_default(1)),
            Some((1, MatchKind::Default))
        );
        // A name still beats any default.
        assert_eq!(
            t.lookup(Some("api.example.com"), Some(1)),
            Some((0, MatchKind::Exact))
        );
        // Without the listener's, the global default applies.
        assert_eq!(t.lookup(None, None), Some((2, MatchKind::Default)));
    }

    #[test]
    fn route_ids_and_labels() {
        let t = table("");
        assert_eq!(t.route_id("exact"), Some(0));
        assert_eq!(t.route_id("deeper"), Some(2));
        assert_eq!(t.route_id("nope"), None);
        assert_eq!(MatchKind::Exact.as_str(), "exact");
        assert_eq!(MatchKind::Wildcard.as_str(), "wildcard");
        assert_eq!(MatchKind::Default.as_str(), "default");
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RouteTable>();
        check::<Config>();
    }
}
