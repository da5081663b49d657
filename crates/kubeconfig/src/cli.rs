//! The `sniroute kubeconfig` command line: its flags, and the adapter that
//! turns them into a [`KubeconfigRequest`](crate::KubeconfigRequest) and
//! writes (or prints) the result.

use std::path::PathBuf;

use config::{Config, ConfigSource};

use crate as kc;

/// The flags of `sniroute kubeconfig`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file (YAML) holding the route.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The route, by name.
    #[arg(long)]
    pub route: String,
    /// Where kubectl reaches sniroute: https://HOST:6443, HOST a public agent.
    #[arg(long)]
    pub apiserver_url: String,
    /// The cluster's CA certificate (PEM), embedded in the kubeconfig.
    #[arg(long, visible_alias = "path-to-custom-ca")]
    pub certificate_authority: Option<PathBuf>,
    /// Do not verify the API server's certificate.
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
    /// Client certificate (PEM), embedded.
    #[arg(long)]
    pub client_certificate: Option<PathBuf>,
    /// Its private key (PEM), embedded.
    #[arg(long)]
    pub client_key: Option<PathBuf>,
    /// Bearer token (visible in `ps`: prefer --token-file).
    #[arg(long)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Name of the cluster, user and context entries [default: the route name].
    #[arg(long)]
    pub context_name: Option<String>,
    /// Leave current-context as it is.
    #[arg(long)]
    pub no_activate_context: bool,
    /// Kubeconfig to merge into [default: first existing file of $KUBECONFIG,
    /// else its last, else ~/.kube/config].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Print a kubeconfig with just this context instead of writing.
    #[arg(long)]
    pub print: bool,
}

/// Runs `sniroute kubeconfig`: loads the config (from `--config`, else as
/// `sniroute run` finds it, through `env`), then writes the context into the
/// kubeconfig kubectl would use, or with `--print` returns a kubeconfig
/// holding just this context. Returns what to print on standard output.
///
/// # Errors
/// A config that does not load, conflicting or invalid flags, unreadable or
/// non-PEM files, and I/O errors writing the kubeconfig.
pub fn run(a: Args, env: impl Fn(&str) -> Option<String>) -> Result<String, kc::KubeconfigError> {
    let source = ConfigSource::resolve(a.config.as_deref(), &env);
    let cfg = Config::load(&source).map_err(kc::KubeconfigError::Config)?;
    let req = kc::KubeconfigRequest {
        route: a.route,
        apiserver_url: a.apiserver_url,
        ca: kc::CaChoice::from_flags(a.certificate_authority, a.insecure_skip_tls_verify)?,
        context_name: a.context_name,
        activate: !a.no_activate_context,
        credentials: kc::Credentials::from_flags(
            a.client_certificate,
            a.client_key,
            a.token,
            a.token_file,
        )?,
    };
    if a.print {
        for w in kc::warnings(&cfg, &req)? {
            eprintln!("warning: {w}");
        }
        let sni = kc::tls_server_name(&cfg, &req.route)?;
        return kc::merge(None, &req, sni.as_deref());
    }
    let path = a
        .kubeconfig
        .or_else(|| kc::default_path(&env))
        .ok_or(kc::KubeconfigError::NoKubeconfigPath)?;
    Ok(format!("{}\n", kc::write(&cfg, &req, &path)?))
}
