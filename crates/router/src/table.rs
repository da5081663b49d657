//! The routing table: from a ClientHello's server name to a route.
//!
//! Built once per config generation and never changed, so connections read
//! it without locks. A lookup is one hash probe for the exact name, then one
//! probe per dot of the name against the wildcard suffixes, leftmost dot
//! first, so the first hit is the longest (most specific) wildcard. Nothing
//! is allocated per lookup.
//!
//! Label-driven routes (from Marathon apps' labels) come and go without a
//! new generation: they have a table of their own, swapped as a whole, and
//! [`RouteTable::lookup_layered`] consults both: static exact, label exact,
//! then wildcards by longest suffix (static first at the same suffix), then
//! the static defaults. [`settle`] decides, once per change, which names
//! label routes keep against the static routes, and reports every conflict.

use std::collections::{HashMap, HashSet};

use config::{Config, NamePattern};
use discovery::{ConflictKind, IssueKind, LabelIssue, LabelRoute};

/// Index of a route in [`Config::routes`].
pub(crate) type RouteId = usize;

/// How a connection was matched to its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MatchKind {
    /// The server name is one of the route's exact names.
    Exact,
    /// The server name ends in one of the route's wildcard suffixes.
    Wildcard,
    /// No SNI, or no route claims the name: the default route.
    Default,
}

/// Which table a lookup's route is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Layer {
    /// A configured route: the id is an index in [`Config::routes`].
    Static,
    /// A label route: the id is an index in the label routes' table.
    Label,
}

impl MatchKind {
    /// A stable label for logs and metrics: `exact`, `wildcard`, `default`.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Wildcard => "wildcard",
            Self::Default => "default",
        }
    }
}

/// Server names and defaults of one config generation (or the names of
/// its label routes).
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteTable {
    /// Exact names, normalised.
    exact: HashMap<Box<str>, RouteId>,
    /// Wildcard suffixes: `*.example.com` is stored as `example.com`.
    wildcard: HashMap<Box<str>, RouteId>,
    /// The global default route.
    default: Option<RouteId>,
    /// Each listener's default: its own, else the global one.
    listener_defaults: Vec<Option<RouteId>>,
}

impl RouteTable {
    /// Builds the table of `config`. A validated config claims each name
    /// once; should a hand-built one not, the first route wins, and
    /// default routes that name no route are ignored.
    pub(crate) fn new(config: &Config) -> RouteTable {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut by_name: HashMap<&str, RouteId> = HashMap::new();
        for (id, route) in config.routes.iter().enumerate() {
            by_name.entry(route.name.as_str()).or_insert(id);
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
            default,
            listener_defaults,
        }
    }

    /// A table of label routes' names, without defaults: route `i` claims
    /// the names `names` yields at position `i` (the first claim of a name
    /// wins, as [`settle`] leaves none twice).
    pub(crate) fn of_labels<'a>(names: impl Iterator<Item = &'a [NamePattern]>) -> RouteTable {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (id, patterns) in names.enumerate() {
            for pattern in patterns {
                let (map, name) = match pattern {
                    NamePattern::Exact(n) => (&mut exact, n),
                    NamePattern::Wildcard(n) => (&mut wildcard, n),
                };
                map.entry(name.as_str().into()).or_insert(id);
            }
        }
        RouteTable {
            exact,
            wildcard,
            default: None,
            listener_defaults: Vec::new(),
        }
    }

    /// The route for `server_name` (already normalised: lower case, no
    /// trailing dot, as [`clienthello::ServerName`] gives it) on the
    /// listener with index `listener` in [`Config::listeners`], with the
    /// label routes of `labels`: this table's exact names, then `labels`'
    /// exact names, then wildcards by longest suffix (this table's before
    /// `labels`' at the same suffix), then that listener's default route,
    /// else the global default. `None` when nothing applies: the connection
    /// is refused. This is the one place defaults are resolved.
    /// Allocation-free.
    pub(crate) fn lookup_layered(
        &self,
        labels: &RouteTable,
        server_name: Option<&str>,
        listener: Option<usize>,
    ) -> Option<(Layer, RouteId, MatchKind)> {
        if let Some(name) = server_name {
            if let Some(&id) = self.exact.get(name) {
                return Some((Layer::Static, id, MatchKind::Exact));
            }
            if let Some(&id) = labels.exact.get(name) {
                return Some((Layer::Label, id, MatchKind::Exact));
            }
            if !self.wildcard.is_empty() || !labels.wildcard.is_empty() {
                // `a.b.example.com` tries `b.example.com`, then
                // `example.com`, then `com`: longest suffix first.
                for (i, b) in name.bytes().enumerate() {
                    if b == b'.' {
                        let suffix = &name[i + 1..];
                        if let Some(&id) = self.wildcard.get(suffix) {
                            return Some((Layer::Static, id, MatchKind::Wildcard));
                        }
                        if let Some(&id) = labels.wildcard.get(suffix) {
                            return Some((Layer::Label, id, MatchKind::Wildcard));
                        }
                    }
                }
            }
        }
        self.default_for(listener)
            .map(|id| (Layer::Static, id, MatchKind::Default))
    }

    fn default_for(&self, listener: Option<usize>) -> Option<RouteId> {
        listener
            .and_then(|i| self.listener_defaults.get(i).copied())
            .unwrap_or(self.default)
    }

    /// [`RouteTable::lookup_layered`] with no label routes: the rules of
    /// this table alone, for its tests.
    #[cfg(test)]
    pub(crate) fn lookup(
        &self,
        server_name: Option<&str>,
        listener: Option<usize>,
    ) -> Option<(RouteId, MatchKind)> {
        self.lookup_layered(
            &RouteTable::of_labels(std::iter::empty()),
            server_name,
            listener,
        )
        .map(|(_, id, kind)| (id, kind))
    }
}

/// The names label routes keep against the static routes of `config`, by
/// position in `labels` (empty: the route is left out), and every conflict:
///
/// - a label route named like a static route is left out, and a name (or
///   wildcard) a static route claims is taken from the label route
///   ([`ConflictKind::StaticOverLabel`]);
/// - an exact name covered by another route's wildcard, where one of the
///   two is a label route, goes to the exact name's route, as lookups do
///   ([`ConflictKind::ExactOverWildcard`]); it is reported, nothing is
///   taken away.
///
/// Conflicts between two label routes over the same name were decided by
/// discovery already.
pub(crate) fn settle(
    config: &Config,
    labels: &[LabelRoute],
) -> (Vec<Vec<NamePattern>>, Vec<LabelIssue>) {
    let mut issues = Vec::new();
    if labels.is_empty() {
        return (Vec::new(), issues);
    }
    let mut static_names: HashMap<&NamePattern, &str> = HashMap::new();
    for r in &config.routes {
        for n in &r.server_names {
            static_names.entry(n).or_insert(r.name.as_str());
        }
    }
    let static_routes: HashSet<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    let conflict = |kind, label: &LabelRoute, message: String| LabelIssue {
        kind: IssueKind::Conflict(kind),
        app_id: label.app_id.clone(),
        route: Some(label.name.clone()),
        message,
    };
    let kept: Vec<Vec<NamePattern>> = labels
        .iter()
        .map(|l| {
            if static_routes.contains(l.name.as_str()) {
                issues.push(conflict(
                    ConflictKind::StaticOverLabel,
                    l,
                    format!("the route name {} is a static route's: the label route is left out", l.name),
                ));
                return Vec::new();
            }
            l.server_names
                .iter()
                .filter(|n| match static_names.get(n) {
                    Some(owner) => {
                        issues.push(conflict(
                            ConflictKind::StaticOverLabel,
                            l,
                            format!("`{n}` is kept by static route {owner}: a static route beats a label route"),
                        ));
                        false
                    }
                    None => true,
                })
                .cloned()
                .collect()
        })
        .collect();
    // Exact names under another route's wildcard. Owners: Ok(static
    // route name) or Err(label index).
    let mut exact: Vec<(&str, Result<&str, usize>)> = Vec::new();
    let mut wildcard: HashMap<&str, Vec<Result<&str, usize>>> = HashMap::new();
    for r in &config.routes {
        for n in &r.server_names {
            match n {
                NamePattern::Exact(e) => exact.push((e.as_str(), Ok(r.name.as_str()))),
                NamePattern::Wildcard(w) => wildcard
                    .entry(w.as_str())
                    .or_default()
                    .push(Ok(r.name.as_str())),
            }
        }
    }
    for (i, names) in kept.iter().enumerate() {
        for n in names {
            match n {
                NamePattern::Exact(e) => exact.push((e.as_str(), Err(i))),
                NamePattern::Wildcard(w) => wildcard.entry(w.as_str()).or_default().push(Err(i)),
            }
        }
    }
    let shown = |owner: Result<&str, usize>| match owner {
        Ok(name) => format!("static route {name}"),
        Err(i) => format!("label route {}", labels[i].name),
    };
    for (name, owner) in exact {
        for (at, b) in name.bytes().enumerate() {
            if b != b'.' {
                continue;
            }
            let suffix = &name[at + 1..];
            for &other in wildcard.get(suffix).into_iter().flatten() {
                if other == owner || (owner.is_ok() && other.is_ok()) {
                    continue;
                }
                // The wildcard's route loses the name; report it on the
                // label route concerned (the wildcard's when both are).
                let label = match (other, owner) {
                    (Err(i), _) | (Ok(_), Err(i)) => &labels[i],
                    (Ok(_), Ok(_)) => continue,
                };
                issues.push(conflict(
                    ConflictKind::ExactOverWildcard,
                    label,
                    format!(
                        "`{name}` goes to {} rather than to {} (`*.{suffix}`): an exact name beats a wildcard",
                        shown(owner),
                        shown(other)
                    ),
                ));
            }
        }
    }
    (kept, issues)
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
        let d = |id| Some((id, MatchKind::Default));
        // No default anywhere: nothing.
        let t = table("");
        assert_eq!(t.lookup(None, None), None);
        assert_eq!(t.lookup(Some("nope.test"), Some(0)), None);
        // The [::1] listener (index 1) names its own.
        assert_eq!(t.lookup(None, Some(1)), d(1));
        assert_eq!(t.lookup(None, Some(99)), None, "an unknown listener");

        let t = table("default_route: deeper\n");
        assert_eq!(t.lookup(None, Some(0)), d(2));
        assert_eq!(
            t.lookup(None, Some(1)),
            d(1),
            "the listener's own beats the global"
        );
        assert_eq!(t.lookup(Some("nope.test"), Some(1)), d(1));
        assert_eq!(t.lookup(None, Some(2)), d(2));
        assert_eq!(
            t.lookup(None, Some(99)),
            d(2),
            "an unknown listener: global"
        );
        assert_eq!(t.lookup(None, None), d(2), "no listener: global");
        // A name still beats any default.
        assert_eq!(
            t.lookup(Some("api.example.com"), Some(1)),
            Some((0, MatchKind::Exact))
        );
    }

    #[test]
    fn match_kind_labels() {
        assert_eq!(MatchKind::Exact.as_str(), "exact");
        assert_eq!(MatchKind::Wildcard.as_str(), "wildcard");
        assert_eq!(MatchKind::Default.as_str(), "default");
    }

    fn label(name: &str, app: &str, names: &[&str]) -> LabelRoute {
        LabelRoute {
            name: name.into(),
            app_id: app.into(),
            port_index: 0,
            server_names: names.iter().map(|n| n.parse().unwrap()).collect(),
            allow_sources: Vec::new(),
            proxy_protocol: config::ProxyProtocol::None,
            balance: config::Balance::LeastConnections,
            health_check: None,
            last_config_change_at: None,
            marathon_lb: false,
            endpoints: Vec::new(),
        }
    }

    fn shown(names: &[NamePattern]) -> Vec<String> {
        names.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn layered_lookup_order() {
        let t = table("");
        let labels = RouteTable::of_labels(
            [
                &["api.example.com".parse().unwrap()][..],
                &[
                    "x.example.com".parse().unwrap(),
                    "*.deep.staging.example.com".parse().unwrap(),
                ][..],
                &[
                    "*.example.com".parse().unwrap(),
                    "*.lbl.example.com".parse().unwrap(),
                ][..],
            ]
            .into_iter(),
        );
        let l = |id, k| Some((Layer::Label, id, k));
        let st = |id, k| Some((Layer::Static, id, k));
        // Static exact first, then label exact (over a static wildcard).
        assert_eq!(
            t.lookup_layered(&labels, Some("api.example.com"), None),
            st(0, MatchKind::Exact)
        );
        assert_eq!(
            t.lookup_layered(&labels, Some("x.example.com"), None),
            l(1, MatchKind::Exact)
        );
        // Longest suffix first, whichever table it is in.
        assert_eq!(
            t.lookup_layered(&labels, Some("a.deep.staging.example.com"), None),
            l(1, MatchKind::Wildcard)
        );
        assert_eq!(
            t.lookup_layered(&labels, Some("a.staging.example.com"), None),
            st(2, MatchKind::Wildcard)
        );
        assert_eq!(
            t.lookup_layered(&labels, Some("a.lbl.example.com"), None),
            l(2, MatchKind::Wildcard)
        );
        // The same suffix: static first.
        assert_eq!(
            t.lookup_layered(&labels, Some("www.example.com"), None),
            st(1, MatchKind::Wildcard)
        );
        // Defaults are the static table's.
        assert_eq!(
            t.lookup_layered(&labels, Some("nope.test"), Some(1)),
            st(1, MatchKind::Default)
        );
        assert_eq!(t.lookup_layered(&labels, None, None), None);
        // An empty label table changes nothing.
        let empty = RouteTable::default();
        for name in [
            "api.example.com",
            "www.example.com",
            "x.staging.example.com",
            "nope.test",
        ] {
            assert_eq!(
                t.lookup_layered(&empty, Some(name), Some(1))
                    .map(|(_, id, k)| (id, k)),
                t.lookup(Some(name), Some(1))
            );
        }
    }

    #[test]
    fn settle_static_beats_label_for_the_same_name_and_route_name() {
        let c = config(ROUTES);
        let labels = [
            label(
                "team-a-0",
                "/team/a",
                &["api.example.com", "a.apps.test", "*.staging.example.com"],
            ),
            label("wild", "/wild", &["w.apps.test"]),
            label("team-b-0", "/team/b", &["api.example.com"]),
        ];
        let (kept, issues) = settle(&c, &labels);
        assert_eq!(shown(&kept[0]), ["a.apps.test"]);
        assert!(kept[1].is_empty(), "named like a static route");
        assert!(kept[2].is_empty());
        let got: Vec<(&str, &str, &str)> = issues
            .iter()
            .map(|i| {
                (
                    i.kind.as_str(),
                    i.route.as_deref().unwrap(),
                    i.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("static_over_label", "team-a-0", "`api.example.com` is kept by static route exact: a static route beats a label route"),
                ("static_over_label", "team-a-0", "`*.staging.example.com` is kept by static route deeper: a static route beats a label route"),
                ("static_over_label", "wild", "the route name wild is a static route's: the label route is left out"),
                ("static_over_label", "team-b-0", "`api.example.com` is kept by static route exact: a static route beats a label route"),
            ]
        );
    }

    #[test]
    fn settle_reports_exact_names_under_other_routes_wildcards() {
        let c = config(
            r#"
listeners: ["127.0.0.1:6443"]
routes:
  - {name: s-exact, server_names: ["db.apps.test"], upstreams: ["10.0.0.1:1"]}
  - {name: s-wild, server_names: ["*.example.com"], upstreams: ["10.0.0.2:1"]}
"#,
        );
        let labels = [
            // A label exact name under a static wildcard: the label gets it.
            label("lbl-exact-0", "/lbl/exact", &["x.example.com"]),
            // A label wildcard over a static exact name: the static keeps it.
            label("lbl-wild-0", "/lbl/wild", &["*.apps.test"]),
            // A label exact name under another label's wildcard.
            label("lbl-inner-0", "/lbl/inner", &["y.apps.test"]),
            // Its own exact name under its own wildcard: no conflict.
            label("lbl-self-0", "/lbl/self", &["*.self.test", "a.self.test"]),
        ];
        let (kept, issues) = settle(&c, &labels);
        assert!(kept.iter().all(|k| !k.is_empty()), "nothing is taken away");
        let got: Vec<(&str, &str, &str)> = issues
            .iter()
            .map(|i| {
                (
                    i.kind.as_str(),
                    i.route.as_deref().unwrap(),
                    i.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("exact_over_wildcard", "lbl-wild-0",
                 "`db.apps.test` goes to static route s-exact rather than to label route lbl-wild-0 (`*.apps.test`): an exact name beats a wildcard"),
                ("exact_over_wildcard", "lbl-exact-0",
                 "`x.example.com` goes to label route lbl-exact-0 rather than to static route s-wild (`*.example.com`): an exact name beats a wildcard"),
                ("exact_over_wildcard", "lbl-wild-0",
                 "`y.apps.test` goes to label route lbl-inner-0 rather than to label route lbl-wild-0 (`*.apps.test`): an exact name beats a wildcard"),
            ]
        );
        // No label routes: nothing to settle, nothing reported.
        assert_eq!(settle(&c, &[]), (Vec::new(), Vec::new()));
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RouteTable>();
        check::<Config>();
    }
}
