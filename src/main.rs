//! The `gymforge` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gymforge::config::Config;
use gymforge::output::print_line;
use gymforge::progress::Display;

/// Exit statuses of `gymforge run` (and of every command: 1 and 2 mean the same everywhere).
const EXIT_CODES: &str = "Exit status:
  0  the batch met its target (or was already complete), or the command succeeded
  1  error: the command could not start, or a condition that dooms every unit (the sandbox
     cannot start, the Hub does not answer, an endpoint refuses the API key, ...) stopped it;
     the last line says which
  2  the command line is wrong
  3  the batch ended short of its target (fewer tasks accepted or scored trajectories made
     than asked; a trajectory without a scored submission does not count); the last line
     says why. Running the same command again resumes it.";

/// `gymforge run`'s status when the batch ended short of its target.
const EXIT_SHORT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "gymforge",
    version,
    about = "Manufactures MLGym-compatible ML research tasks and teacher trajectories",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one batch: synthesize tasks, run teacher rollouts, export MLGym tasks and SFT data.
    /// Running again on the same --out resumes an interrupted batch.
    #[command(after_help = EXIT_CODES)]
    Run {
        #[command(flatten)]
        batch: BatchArgs,
        /// Append every LLM request and response to this JSONL file (API keys removed).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Answer every LLM request from a file written by --record; no endpoint is contacted.
        #[arg(long, value_name = "FILE", conflicts_with = "record")]
        replay: Option<PathBuf>,
    },
    /// Re-export a run's outputs with options; with --store, write a shared batch's whole output
    /// directory (MLGym tasks, trajectories, SFT data, report) from its PostgreSQL store, on any
    /// machine, while the batch runs.
    #[command(args_conflicts_with_subcommands = true)]
    Export {
        #[command(subcommand)]
        what: Option<ExportCommand>,
        /// postgres://USER@HOST:PORT/DATABASE (default: GYMFORGE_STORE_URL, then store.url).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// Config file (for store.url and store.password_file).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to write the output directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Benchmarks that print ratios against bounds measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Run one batch as a service: an HTTP status server on loopback, SIGTERM/SIGINT drain the
    /// work in flight and exit 0; a restart resumes. One process per output directory.
    Daemon {
        #[command(flatten)]
        batch: BatchArgs,
        /// Address of the status server (overrides daemon.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Audit task bundles.
    Check {
        #[command(subcommand)]
        what: CheckCommand,
    },
    /// Per-task and per-model scores, performance profiles and AUP, computed as MLGym does.
    /// Input: a gymforge output directory, or MLGym's published best/last score tables.
    Aup {
        /// A gymforge output directory (reads mlgym/tasks.json and trajectories/).
        #[arg(long, conflicts_with_all = ["best", "last", "directions"])]
        out: Option<PathBuf>,
        /// Best-attempt score table in MLGym's CSV layout (tasks x methods).
        #[arg(long, requires_all = ["last", "directions"])]
        best: Option<PathBuf>,
        /// Last-submission score table in MLGym's CSV layout.
        #[arg(long)]
        last: Option<PathBuf>,
        /// CSV `task,direction` (maximize or minimize) for the tables' tasks.
        #[arg(long)]
        directions: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Write the best-attempt performance profile as SVG here (the last-submission profile
        /// goes beside it).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// The simulated teacher LLM (an OpenAI-compatible test and demo server).
    Sim {
        #[command(subcommand)]
        what: ServeCommand,
    },
    /// The embedded Hugging Face Hub mirror (datasets bundled with scikit-learn).
    Hub {
        #[command(subcommand)]
        what: ServeCommand,
    },
    /// A batch shared through a PostgreSQL store.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The nodes (alive or not), units queued and in flight per stage, and leases taken over,
    /// read from the store without joining the batch.
    Status {
        /// postgres://USER@HOST:PORT/DATABASE (default: GYMFORGE_STORE_URL, then store.url).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// Config file (for store.url, store.password_file and store.lease_secs).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CheckCommand {
    /// Run every validity check of one task bundle in the sandbox; prints a JSON report and
    /// exits non-zero when the task is not valid.
    Task {
        /// Bundle directory: task.json, prepare.py, baseline.py, evaluate.py, raw/.
        dir: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// What a batch (`run` or `daemon`) is given on the command line.
#[derive(clap::Args)]
struct BatchArgs {
    /// Config file merged over the embedded default (default: the embedded default alone).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "gymforge-out")]
    out: PathBuf,
    /// Accepted tasks to produce (overrides run.tasks); 0 means no target: keep going until stopped.
    // Taken as text (negative numbers included) so that batch_config can say what is wrong with it.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    tasks: Option<String>,
    /// Teacher rollouts per accepted task (overrides run.rollouts).
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    rollouts: Option<String>,
    /// Seed of everything random in the run (overrides seed and sim.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// A PostgreSQL store, postgres://USER@HOST:PORT/DATABASE (overrides GYMFORGE_STORE_URL and
    /// store.url; the password comes from GYMFORGE_STORE_PASSWORD or store.password_file).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Write SFT data from a run's trajectories: those with a scored submission, observations
    /// cut to head and tail, old observations elided to fit the token budget, duplicates
    /// dropped. Prints how many were kept and why the others were not.
    Sft {
        /// The run's output directory.
        #[arg(long)]
        out: PathBuf,
        /// Where to write (default: OUT/sft/train.jsonl, or OUT/sft/train.sharegpt.jsonl).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Keep only trajectories whose best score beats the task's baseline.
        #[arg(long)]
        beats_baseline: bool,
        /// ShareGPT layout (`conversations` of `from`/`value`) instead of chat `messages`.
        #[arg(long)]
        sharegpt: bool,
        /// Longest example in tokens (o200k_base).
        #[arg(long, default_value_t = 32_768)]
        token_budget: u64,
        /// Observations the model saw verbatim (the run's agent.keep_observations).
        #[arg(long, default_value_t = 5)]
        keep_observations: usize,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Run the whole pipeline against the simulated teacher and report trajectories per hour
    /// against the bound the LLM limit and the rollout slots allow, and whether memory stays flat.
    Pipeline {
        /// Length of the measured window (after two tasks are synthesised).
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// The simulated endpoint's requests-per-minute limit.
        #[arg(long, default_value_t = 120)]
        rpm: u32,
        /// Rollouts run at once (sandbox slots).
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// Median latency of the simulated teacher's answers.
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
        /// 99th percentile of that latency.
        #[arg(long, default_value_t = 800)]
        latency_p99_ms: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Claim and commit units in a PostgreSQL store with many claimers at once, against the
    /// bound its round trips set (give it an empty database: it adds units and removes them).
    Store {
        /// postgres://USER@HOST:PORT/DATABASE (default: GYMFORGE_STORE_URL, then store.url).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// Config file (for store.url and store.password_file).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Claimers at once, each on a connection of its own.
        #[arg(long, default_value_t = 64)]
        claimers: usize,
        /// Length of each of the two measured phases.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drive the LLM gateway against the simulated teacher on loopback at a requests-per-minute
    /// limit, with injected 429s, and report how much of the limit it used.
    Llm {
        /// The endpoint's requests-per-minute limit.
        #[arg(long, default_value_t = 600)]
        rpm: u32,
        /// Length of the measured run.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Fraction of requests the simulated teacher answers with 429 (and a retry-after-ms).
        #[arg(long, default_value_t = 0.1)]
        fault_429: f64,
        /// Nodes sharing the limit through --store (the server then enforces the limit itself
        /// and injects no 429 of its own).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// postgres://USER@HOST:PORT/DATABASE, with --nodes (default: GYMFORGE_STORE_URL).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// Config file (for store.password_file), with --nodes.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ServeCommand {
    /// Serve on a loopback port until interrupted.
    Serve {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Err(e) = resolve_paths(&mut cli.command) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    // A batch's configuration is read first: it says where telemetry goes.
    let batch = match &cli.command {
        Command::Run { batch, .. } | Command::Daemon { batch, .. } => match batch_config(batch) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    // A daemon's log is all it says: its own lines (info) show without RUST_LOG.
    let level = if matches!(cli.command, Command::Daemon { .. }) { "info" } else { "warn" };
    let telemetry = match gymforge::telemetry::init_with_level(batch.as_ref().map(|c| &c.telemetry), level) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    log_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(cli.command, batch)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Work abandoned by a drain deadline must not hold the exit up; then send the last spans.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    telemetry.shutdown();
    code
}

/// Runs a command; `batch` is the configuration `main` read for `run` and `daemon`.
async fn dispatch(command: Command, batch: Option<Config>) -> anyhow::Result<ExitCode> {
    const READ_IN_MAIN: &str = "main reads the configuration of run and daemon";
    match command {
        Command::Run { batch: args, record, replay } => {
            let config = batch.expect(READ_IN_MAIN);
            let source = match replay {
                Some(path) => gymforge::gateway::Source::Replay(path),
                None => gymforge::gateway::Source::Live { record },
            };
            run(config, args.out, source).await
        }
        Command::Export { what: None, store, config, out } => {
            let mut config = load_config(config.as_deref())?;
            config.store.url = store_url(store.as_deref(), &config.store.url)?.unwrap_or_default();
            let out = out.ok_or_else(|| {
                anyhow::anyhow!("gymforge export writes a shared batch with --store URL --out DIR (or see: gymforge export sft --help)")
            })?;
            let display = Display::new();
            display.status("exporting from the store");
            let written = gymforge::run::export_batch(&config, &out).await;
            display.finish();
            let (tasks, rollouts) = written?;
            print_line(&format!("{}: {tasks} tasks and {rollouts} trajectories from the store", out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            what: Some(ExportCommand::Sft { out, file, beats_baseline, sharegpt, token_budget, keep_observations }), ..
        } => {
            let db = gymforge::run::state_dir(&out).join("state.db");
            anyhow::ensure!(db.is_file(), "{} holds no gymforge run (no {})", out.display(), db.display());
            let store = gymforge::store::SqliteStore::open(&db)?;
            let inputs = gymforge_actors::export::final_inputs(&store, 0.0).await.map_err(anyhow::Error::msg)?;
            let simulated = std::fs::read_to_string(out.join("report.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<gymforge::export::Report>(&t).ok())
                .and_then(|r| r.services)
                .is_some_and(|s| s.teacher_simulated());
            let options = gymforge::sft::SftOptions {
                beats_baseline_only: beats_baseline,
                sharegpt,
                token_budget,
                keep_observations,
                simulated,
                ..Default::default()
            };
            let (lines, summary) = gymforge::sft::build(&inputs.rollouts, &inputs.tasks, &options);
            let file = file.unwrap_or_else(|| out.join(if sharegpt { "sft/train.sharegpt.jsonl" } else { "sft/train.jsonl" }));
            if let Some(why) = summary.nothing_kept() {
                // An empty file would replace what an earlier export wrote there.
                let hint = if summary.over_budget > 0 { format!(" (--token-budget {token_budget})") } else { String::new() };
                anyhow::bail!("{why}{hint}; {} was left as it was", file.display());
            }
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            gymforge::export::write_jsonl(&file, &lines).map_err(anyhow::Error::msg)?;
            print_line(&format!("{}: {}", file.display(), summary.describe()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { what: BenchCommand::Llm { rpm, seconds, nodes, store, config, json, .. } } if nodes > 1 => {
            anyhow::ensure!(rpm > 0, "--rpm must be at least 1");
            let config = load_config(config.as_deref())?;
            let url = store_url(store.as_deref(), &config.store.url)?
                .ok_or_else(|| anyhow::anyhow!("--nodes shares the limit through a store: --store postgres://USER@HOST:PORT/DATABASE"))?;
            let target = gymforge::store::PgTarget::parse(&url)?;
            let bench = gymforge::bench::shared_llm::BenchSharedLlm { rpm, seconds, nodes, target, password: config.store.password()? };
            print_bench(gymforge::bench::shared_llm::run(bench).await?, json)
        }
        Command::Bench { what: BenchCommand::Llm { rpm, seconds, fault_429, json, .. } } => {
            anyhow::ensure!(rpm > 0 && seconds > 0, "--rpm and --seconds must be at least 1");
            anyhow::ensure!((0.0..1.0).contains(&fault_429), "--fault-429 must be in [0, 1)");
            print_bench(gymforge::bench::llm::run(gymforge::bench::llm::BenchLlm { rpm, seconds, fault_429 }).await?, json)
        }
        Command::Bench { what: BenchCommand::Pipeline { seconds, rpm, slots, latency_ms, latency_p99_ms, json } } => {
            anyhow::ensure!(seconds >= 10 && rpm > 0 && slots > 0, "--seconds must be at least 10, --rpm and --slots at least 1");
            anyhow::ensure!(latency_p99_ms >= latency_ms, "--latency-p99-ms must be at least --latency-ms");
            let display = Display::new();
            let bench = gymforge::bench::pipeline::BenchPipeline { seconds, rpm, slots, latency_ms, latency_p99_ms };
            let result = gymforge::bench::pipeline::run(bench, &|m: &str| display.status(m)).await;
            display.finish();
            print_bench(result?, json)
        }
        Command::Bench { what: BenchCommand::Store { store, config, claimers, seconds, json } } => {
            anyhow::ensure!(claimers > 0 && seconds > 0, "--claimers and --seconds must be at least 1");
            let config = load_config(config.as_deref())?;
            let url = store_url(store.as_deref(), &config.store.url)?
                .ok_or_else(|| anyhow::anyhow!("name the store: --store postgres://USER@HOST:PORT/DATABASE (or GYMFORGE_STORE_URL)"))?;
            let target = gymforge::store::PgTarget::parse(&url)?;
            let bench = gymforge::bench::store::BenchStore { target, password: config.store.password()?, claimers, seconds };
            print_bench(gymforge::bench::store::run(bench).await?, json)
        }
        Command::Daemon { batch: args, listen } => {
            let mut config = batch.expect(READ_IN_MAIN);
            if let Some(addr) = listen {
                config.daemon.listen = addr.to_string();
            }
            gymforge::daemon::run(config, args.out).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Check { what: CheckCommand::Task { dir, config } } => {
            let config = load_config(config.as_deref())?;
            let display = Display::new();
            let result = gymforge::check::check_task(&config, &dir, &|m: &str| display.status(m)).await;
            display.finish();
            let (report, valid) = result?;
            print_line(&serde_json::to_string_pretty(&report)?)?;
            Ok(if valid { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Aup { out, best, last, directions, json, svg } => {
            let input = match (out, best, last, directions) {
                (Some(dir), None, None, None) => gymforge::aup::AupInput::OutputDir(dir),
                (None, Some(best), Some(last), Some(directions)) => gymforge::aup::AupInput::Tables { best, last, directions },
                _ => anyhow::bail!("give either --out DIR, or --best, --last and --directions"),
            };
            print_line(&gymforge::aup::run_aup(input, json, svg.as_deref())?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster { what: ClusterCommand::Status { store, config, json } } => {
            let config = load_config(config.as_deref())?;
            let url = store_url(store.as_deref(), &config.store.url)?.ok_or_else(|| {
                anyhow::anyhow!("name the store: --store postgres://USER@HOST:PORT/DATABASE (or GYMFORGE_STORE_URL, or store.url)")
            })?;
            let target = gymforge::store::PgTarget::parse(&url)?;
            let lease = std::time::Duration::from_secs(config.store.lease_secs);
            let view = gymforge::store::observe(&target, config.store.password()?.as_deref(), lease).await?;
            print_line(&if json { serde_json::to_string_pretty(&view)? } else { view.table(&target.display()) })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim { what: ServeCommand::Serve { port, config } } => {
            let config = load_config(config.as_deref())?;
            let (addr, handle) = gymforge_sim::teacher::serve(config.sim.clone(), loopback(port)).await?;
            eprintln!("simulated teacher (a test and demo instrument, not a real model) listening on http://{addr}/v1");
            wait_for_interrupt(handle).await
        }
        Command::Hub { what: ServeCommand::Serve { port, config } } => {
            let config = load_config(config.as_deref())?;
            let display = Display::new();
            let setup = async {
                let (python, _) = gymforge::run::sandbox(&config, &std::env::temp_dir(), &|m: &str| display.status(m)).await?;
                gymforge_sim::mirror::HubMirror::ensure_built(&gymforge::run::mirror_cache_dir(&config), &python.python(), &|m: &str| {
                    display.status(m)
                })
                .await
            };
            let root = setup.await;
            display.finish();
            let (addr, handle) = gymforge_sim::mirror::HubMirror::serve(root?, loopback(port)).await?;
            eprintln!("embedded Hub mirror (scikit-learn's bundled datasets) listening on http://{addr}");
            wait_for_interrupt(handle).await
        }
    }
}

async fn run(config: Config, out: PathBuf, llm_source: gymforge::gateway::Source) -> anyhow::Result<ExitCode> {
    let display = Display::new();
    let (tx, rx) = tokio::sync::watch::channel(gymforge_actors::Progress::default());
    let request = gymforge::run::RunRequest { config, out: out.clone(), llm_source, drain: None, daemon: None };
    let status = |m: &str| display.status(m);
    let run = gymforge::run::run_batch(request, &status, tx);
    let follow = display.follow(rx);
    let (result, ()) = tokio::join!(run, follow);
    display.finish();
    let end = result?;
    let report_path = out.join("report.json");
    let text = std::fs::read_to_string(&report_path).with_context(|| format!("cannot read {}", report_path.display()))?;
    let report: gymforge::export::Report =
        serde_json::from_str(&text).with_context(|| format!("{} is not a report gymforge can read", report_path.display()))?;
    print_line(&gymforge::export::summary_table(&report))?;
    print_line(&format!("outputs in {}", out.display()))?;
    if end.already_complete {
        let t = &end.tally;
        print_line(&format!(
            "already complete: {} tasks x {} rollouts were made earlier (the summary above is theirs); \
             ask for more with --tasks or --rollouts",
            t.accepted_tasks, t.rollouts_per_task
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    Ok(match end.tally.shortfall(&report) {
        Some(why) => {
            eprintln!("gymforge: {why}");
            ExitCode::from(EXIT_SHORT)
        }
        None => ExitCode::SUCCESS,
    })
}

/// Prints a bench's report; a missed target is exit status 1.
fn print_bench(report: gymforge::bench::BenchReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_line(&serde_json::to_string_pretty(&report.json)?)?;
    } else {
        print_line(&report.table)?;
    }
    Ok(if report.targets_met { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The config of a batch: the file (or the embedded default) with the command line's overrides.
fn batch_config(args: &BatchArgs) -> anyhow::Result<Config> {
    let tasks = args.tasks.as_deref().map(|v| whole_number("--tasks", v, 0, " (0: no target)")).transpose()?;
    let rollouts = args.rollouts.as_deref().map(|v| whole_number("--rollouts", v, 1, "")).transpose()?;
    let mut config = load_config(args.config.as_deref())?;
    if let Some(n) = tasks {
        config.run.tasks = n;
    }
    if let Some(k) = rollouts {
        config.run.rollouts = k;
    }
    if let Some(s) = args.seed {
        config.seed = s;
        config.sim.seed = s;
    }
    if let Some(url) = store_url(args.store.as_deref(), &config.store.url)? {
        config.store.url = url;
    }
    Ok(config)
}

/// The store URL: `--store`, else `GYMFORGE_STORE_URL`, else the config's (checked when loaded);
/// `None` for the embedded SQLite store.
fn store_url(flag: Option<&str>, configured: &str) -> anyhow::Result<Option<String>> {
    let from_env = std::env::var("GYMFORGE_STORE_URL").ok().filter(|v| !v.trim().is_empty());
    let Some((url, origin)) = flag.map(|u| (u.to_string(), "--store")).or(from_env.map(|u| (u, "GYMFORGE_STORE_URL"))) else {
        return Ok((!configured.is_empty()).then(|| configured.to_string()));
    };
    // The error never repeats the URL: it may hold a password.
    gymforge::store::PgTarget::parse(&url).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok(Some(url))
}

/// The value of a count option such as `--tasks`: a whole number of at least `min`; `note` says
/// what a special value means.
fn whole_number(flag: &str, value: &str, min: u32, note: &str) -> anyhow::Result<u32> {
    match value.trim().parse::<u64>() {
        Ok(n) if n >= u64::from(min) => u32::try_from(n).map_err(|_| anyhow::anyhow!("{flag} must be at most {}, not {value}", u32::MAX)),
        _ => anyhow::bail!("{flag} must be a whole number, {min} or more{note}, not {value}"),
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    };
    config.resolve_paths()?;
    Ok(config)
}

/// Makes every path on the command line absolute against the working directory, once, before
/// anything else runs: no later step depends on the directory gymforge was started in.
fn resolve_paths(command: &mut Command) -> anyhow::Result<()> {
    use gymforge::config::absolute;
    fn one(p: &mut PathBuf) -> anyhow::Result<()> {
        *p = absolute(p)?;
        Ok(())
    }
    fn maybe(p: &mut Option<PathBuf>) -> anyhow::Result<()> {
        p.as_mut().map_or(Ok(()), one)
    }
    fn batch(b: &mut BatchArgs) -> anyhow::Result<()> {
        one(&mut b.out)?;
        maybe(&mut b.config)
    }
    match command {
        Command::Run { batch: b, record, replay } => {
            batch(b)?;
            maybe(record)?;
            maybe(replay)
        }
        Command::Daemon { batch: b, .. } => batch(b),
        Command::Export { what: Some(ExportCommand::Sft { out, file, .. }), .. } => {
            one(out)?;
            maybe(file)
        }
        Command::Export { what: None, config, out, .. } => {
            maybe(config)?;
            maybe(out)
        }
        Command::Check { what: CheckCommand::Task { dir, config } } => {
            one(dir)?;
            maybe(config)
        }
        Command::Aup { out, best, last, directions, svg, .. } => [out, best, last, directions, svg].into_iter().try_for_each(maybe),
        Command::Sim { what: ServeCommand::Serve { config, .. } } | Command::Hub { what: ServeCommand::Serve { config, .. } } => {
            maybe(config)
        }
        Command::Bench { what: BenchCommand::Store { config, .. } } => maybe(config),
        Command::Bench { .. } => Ok(()),
        Command::Cluster { what: ClusterCommand::Status { config, .. } } => maybe(config),
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn wait_for_interrupt(handle: tokio::task::JoinHandle<()>) -> anyhow::Result<ExitCode> {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
        r = handle => {
            r?;
            anyhow::bail!("the server stopped unexpectedly")
        }
    }
}

/// Panics (including deliberately injected worker faults, which the supervisor recovers from)
/// are logged as one line.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        tracing::error!("panic{location}: {message}");
    }));
}
