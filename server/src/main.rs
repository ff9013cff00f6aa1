//! The `hsmd` binary: `hsmd serve --config FILE` for deployments, `hsmd dev` for a
//! self-provisioned SoftHSM2 token and local PKI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hsmd",
    version,
    about = "Key-management and signing daemon in front of a PKCS#11 token"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve from a config file (TOML; HSMD_* environment variables override it,
    /// nested keys joined with "__", e.g. HSMD_HSM__PIN_FILE).
    Serve {
        /// Config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Provision (or reuse) a SoftHSM2 or TPM token, PIN, local CA, certificates and config
    /// under DIR, then serve; writes DIR/client.toml for hsmctl once listening.
    Dev(Box<DevArgs>),
}

#[derive(clap::Args)]
struct DevArgs {
    /// Data folder [default: $XDG_DATA_HOME/hsmd/dev or ~/.local/share/hsmd/dev].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT", default_value = hsmd::config::DEFAULT_LISTEN)]
    listen: String,
    /// Also serve the Kubernetes KMS v2 plugin on this Unix socket (mode 0600).
    #[arg(long, value_name = "PATH")]
    kms_socket: Option<PathBuf>,
    /// The plugin's key: alias/NAME (an AES-256 key is created for a missing alias)
    /// or a key id.
    #[arg(long, value_name = "KEY", default_value = hsmd::config::DEFAULT_KMS_KEY, requires = "kms_socket")]
    kms_key: String,
    /// Also serve Prometheus metrics (/metrics) and /healthz over plain HTTP on this
    /// address; port 0 picks a free port. Off unless given.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// The token: softhsm (SoftHSM2) or tpm (tpm2-pkcs11 on swtpm, with a private
    /// D-Bus and tpm2-abrmd, all stopped with hsmd; under DIR/tpm).
    #[arg(long, value_name = "TOKEN", default_value = "softhsm")]
    token: hsmd::dev::DevToken,
    /// Sign container images in this OCI registry (http://HOST:PORT or https://...):
    /// enables the SigningPolicyService and ImageSigningService, and the push webhook.
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// Where the registry's push notifications are served (POST /registry/events);
    /// port 0 picks a free port. The address is printed and written to the profile.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:0",
        requires = "registry"
    )]
    webhook_listen: String,
    /// The shared secret the registry sends as `Authorization: Bearer <secret>`
    /// [default: DIR/webhook.secret, made at first start].
    #[arg(long, value_name = "FILE", requires = "registry")]
    webhook_secret_file: Option<PathBuf>,
    /// Run as one replica of a cluster whose metadata is in this PostgreSQL
    /// database (postgres://USER@HOST:PORT/DB[?sslmode=...]), on DIR's token and PKI.
    /// Several such processes on one DIR are one cluster: each has its own config
    /// (DIR/hsmd-NAME.toml) and audit chain (DIR/audit/NAME/), and DIR/client.toml
    /// lists every replica's endpoint.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// The PostgreSQL password, one line [default: PGPASSWORD, or the URL's].
    #[arg(long, value_name = "FILE", requires = "store_url")]
    store_password_file: Option<PathBuf>,
    /// PEM roots to verify PostgreSQL's TLS certificate with (with sslmode=require or
    /// prefer in the URL); without it, no TLS.
    #[arg(long, value_name = "FILE", requires = "store_url")]
    store_ca_file: Option<PathBuf>,
    /// This replica's name in the cluster (letters, digits, '-', '_', '.')
    /// [default: the host name].
    #[arg(long, value_name = "NAME", requires = "store_url")]
    node_id: Option<String>,
    /// Start a private PostgreSQL under DIR/postgres (Debian's `postgresql`, a free
    /// port, no system service touched, password authentication and TLS with the dev
    /// PKI; kept across restarts) and run --replicas replicas on it, each an `hsmd dev
    /// --store-url` process of its own; stopped together on Ctrl-C or SIGTERM.
    #[arg(long, conflicts_with = "store_url")]
    postgres: bool,
    /// How many replicas --postgres runs (nodes node1, node2...). Their gRPC ports
    /// follow --listen's (port 0: free ports).
    #[arg(long, value_name = "N", default_value_t = 2, requires = "postgres",
              value_parser = clap::value_parser!(u16).range(1..=16))]
    replicas: u16,
}

fn main() -> ExitCode {
    // A file-size limit (RLIMIT_FSIZE) reached by the audit log must fail that write
    // (EFBIG: the calls are refused AUDIT_UNAVAILABLE and hsmd recovers once the limit
    // is raised), not kill the daemon with SIGXFSZ.
    // Every client connection is a file descriptor: take the whole hard limit, not the
    // soft default (often 1024).
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    // SAFETY: setting a signal to SIG_IGN installs no handler; nothing runs yet.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,cryptoki::mechanism=off".into()),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is lost; reporting
        // that with eprintln! would panic the task that logged it.
        .log_internal_errors(false)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Everything that touches the process environment happens here, before the
    // runtime starts any thread.
    // The TPM token's processes live as long as this binding.
    let (config_path, dev_dir, _tpm) = match cli.command {
        Cmd::Serve { config } => (config, None, None),
        Cmd::Dev(args) => {
            let DevArgs {
                data_dir,
                listen,
                kms_socket,
                kms_key,
                metrics_listen,
                token,
                registry,
                webhook_listen,
                webhook_secret_file,
                store_url,
                store_password_file,
                store_ca_file,
                node_id,
                postgres,
                replicas,
            } = *args;
            let dir = data_dir.unwrap_or_else(hsmd::dev::default_data_dir);
            if postgres {
                return hsmd::dev::cluster::run(&dir, &listen, token, replicas);
            }
            let cluster = store_url
                .map(|url| {
                    hsmd::dev::DevCluster::new(url, store_password_file, store_ca_file, node_id)
                })
                .transpose()?;
            let options = hsmd::dev::DevOptions {
                token,
                metrics_listen: metrics_listen.as_deref(),
                kms: kms_socket.map(|socket| hsmd::dev::DevKms {
                    socket,
                    key: kms_key,
                }),
                registry: registry.map(|url| hsmd::dev::DevRegistry {
                    url,
                    webhook_listen,
                    webhook_secret_file,
                }),
                cluster: cluster.clone(),
            };
            let p = hsmd::dev::provision_with(&dir, &listen, &options)?;
            let node = cluster.map(|c| c.node_id);
            (p.config, Some((dir, node)), p.tpm)
        }
    };
    let cfg = hsmd::config::Config::load(&config_path)?;
    if let Some(conf) = &cfg.softhsm2_conf {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("SOFTHSM2_CONF", conf) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(hsmd::server::run(cfg, move |bound| match &dev_dir {
        Some((dir, node)) => hsmd::dev::write_node_profile(
            dir,
            hsmd::dev::Listening {
                grpc: bound.grpc,
                metrics: bound.metrics,
                webhook: bound.webhook,
            },
            node.as_deref(),
        ),
        None => Ok(()),
    }))
}
