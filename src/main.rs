//! The `astron-edge` command line (SPEC §1).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use astron_edge::DEFAULT_CONFIG_PATH;

/// jemalloc instead of glibc malloc: less CPU per request and per idle stream (measured by
/// the bench script; mimalloc tripled SSE memory per stream, so not that one).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them). `background_thread`: freed memory is purged by a thread of jemalloc's own
/// rather than inside the proxy's allocations, so the memory set up for thousands of SSE
/// streams goes back to the system steadily and without stalling the proxy's own threads
/// (`bench/sse.sh`: 7.1–7.5 KiB per held stream in 7 rounds, 7.7–11.4 KiB in 8 without);
/// small requests cost the same (`bench/contend.sh`: 0.999×).
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: Option<&std::ffi::c_char> =
    // SAFETY: the first byte of a NUL-terminated 'static literal; jemalloc reads it as a C
    // string (`Option<&T>` has the ABI of a nullable `const char *`).
    Some(unsafe { &*c"background_thread:true".as_ptr() });

#[derive(Parser)]
#[command(
    name = "astron-edge",
    version,
    about = "Edge proxy for the astron-agent stack"
)]
struct Cli {
    /// Config file
    #[arg(short = 'c', long = "config", env = "ASTRON_EDGE_CONFIG", global = true,
          default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground (the default)
    Run {
        /// Take over the listening sockets of a running instance (sent SIGQUIT)
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the config and print a summary, like `nginx -t`
    Check,
    /// Print (or write) the astron-edge TOML equivalent of an nginx.conf
    ImportNginx {
        /// The nginx.conf to read (includes are followed)
        nginx_conf: PathBuf,
        /// Write the TOML here instead of stdout
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// GET the local health endpoint; exit 0 on 200, 1 otherwise (the container healthcheck)
    Health {
        /// URL to probe; default: the config's first listener and health path
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Run { upgrade } => astron_edge::run(&cli.config, upgrade),
        Command::Check => astron_edge::check(&cli.config).map(|summary| print!("{summary}")),
        Command::ImportNginx { nginx_conf, output } => import_nginx(&nginx_conf, output.as_deref()),
        Command::Health { url } => {
            let url = match url {
                Some(url) => Ok(url),
                None => astron_edge::load_config(&cli.config)
                    .map(|c| astron_edge::health_url(&c))
                    .map_err(Into::into),
            };
            url.and_then(|url| astron_edge::probe_health(&url))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `import-nginx`: the TOML on stdout or in `output`, warnings (`FILE:LINE: ...`) on stderr.
fn import_nginx(conf: &std::path::Path, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let imported = astron_edge::import_nginx_file(conf)?;
    for warning in &imported.warnings {
        eprintln!("{warning}");
    }
    // What the proxy would refuse is refused here too, at its place in the nginx file.
    astron_edge::parse_config(conf, &imported.toml).map_err(|e| imported.locate(conf, e))?;
    match output {
        Some(path) => std::fs::write(path, &imported.toml)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{}", imported.toml),
    }
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `docker logs` and log files get plain lines.
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            !astron_edge::is_routine_log(meta)
        }));
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .init();
}
