//! The bubblewrap sandbox against the real Python environment: what a job can do, and what it
//! cannot (network, host files, other jobs, the parent's environment, running forever, flooding
//! output).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use gymforge::config::{Config, PYTHON_REQUIREMENTS, SandboxConfig};
use gymforge::sandbox::{BwrapSandbox, PythonEnv};
use gymforge_actors::ports::{JobOutput, Mount, Sandbox, SandboxJob};

const INSIDE: &str = "/home/agent/workspace";

fn config() -> SandboxConfig {
    Config::embedded().sandbox
}

/// The provisioned environment (the first call in any process builds it; the file lock makes
/// concurrent tests wait for one build).
fn env() -> PythonEnv {
    static ENV: OnceLock<PythonEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        // Set before any job starts; `parent_environment_does_not_leak` looks for it.
        // SAFETY: every test reaches this point before it starts threads or processes of its
        // own, and the standard library serialises its own environment accesses.
        unsafe { std::env::set_var("GYMFORGE_TEST_SECRET", "sk-must-not-leak") };
        PythonEnv::ensure(&config(), PYTHON_REQUIREMENTS, &|_| {})
            .unwrap_or_else(|e| panic!("provisioning the Python environment failed: {e:#}"))
    })
    .clone()
}

fn sandbox() -> BwrapSandbox {
    let env = tokio::task::block_in_place(env);
    BwrapSandbox::new(&config(), env).expect("bwrap is available")
}

fn job(workdir: &Path, command: &[&str], timeout_secs: u64) -> SandboxJob {
    SandboxJob {
        label: format!("test {}", command.join(" ")),
        workdir: workdir.to_path_buf(),
        workdir_inside: INSIDE.to_string(),
        mounts: Vec::new(),
        command: command.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(timeout_secs),
    }
}

fn python(workdir: &Path, code: &str) -> SandboxJob {
    job(workdir, &["python", "-c", code], 120)
}

async fn run(sb: &BwrapSandbox, job: SandboxJob) -> JobOutput {
    sb.run(job).await.unwrap_or_else(|e| panic!("the sandbox itself failed: {e}"))
}

fn describe(out: &JobOutput) -> String {
    format!("{}\n--- stdout ---\n{}\n--- stderr ---\n{}", out.status_line(), out.stdout, out.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_succeeds() {
    sandbox().probe(&std::env::temp_dir()).await.expect("the probe passes on this machine");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_prints_writes_and_imports_the_stack() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    let code = "import numpy, pandas, sklearn, pyarrow, os\n\
                print('hello from', os.getcwd())\n\
                open('result.txt', 'w').write('written')\n\
                print('numpy', numpy.__version__)";
    let out = run(&sb, python(work.path(), code)).await;
    assert!(out.success(), "{}", describe(&out));
    assert!(out.stdout.contains(&format!("hello from {INSIDE}")), "{}", describe(&out));
    assert!(out.stdout.contains("numpy "), "{}", describe(&out));
    assert!(!out.timed_out && !out.output_truncated);
    assert_eq!(std::fs::read_to_string(work.path().join("result.txt")).unwrap(), "written");
    assert!(out.elapsed_secs > 0.0 && out.elapsed_secs < 120.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn job_failures_are_outputs_not_errors() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    let out = run(&sb, python(work.path(), "import sys; print('oops', file=sys.stderr); sys.exit(3)")).await;
    assert_eq!(out.exit_code, Some(3), "{}", describe(&out));
    assert_eq!(out.stderr.trim(), "oops");
    let out = run(&sb, job(work.path(), &["no-such-command"], 30)).await;
    assert!(!out.success(), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_capabilities_and_unprivileged() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    let code = "import os\n\
                caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff:')]\n\
                print(caps[0])";
    let out = run(&sb, python(work.path(), code)).await;
    assert!(out.success(), "{}", describe(&out));
    assert_eq!(out.stdout.trim(), "0000000000000000", "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_network() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\n\
         s = socket.socket()\n\
         s.settimeout(5)\n\
         try:\n    s.connect(('127.0.0.1', {port}))\n    print('CONNECTED')\n\
         except OSError as e:\n    print('refused', e)\n"
    );
    let out = run(&sb, python(work.path(), &code)).await;
    assert!(out.success(), "{}", describe(&out));
    assert!(out.stdout.contains("refused"), "{}", describe(&out));
    assert!(!out.stdout.contains("CONNECTED"), "{}", describe(&out));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the listener saw a connection: {other:?}"),
    }
    // Outside hosts are unreachable too.
    let out = run(
        &sb,
        python(
            work.path(),
            "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=5)\n    print('CONNECTED')\n\
             except OSError as e:\n    print('unreachable', e)",
        ),
    )
    .await;
    assert!(out.stdout.contains("unreachable"), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn host_files_and_other_jobs_are_out_of_reach() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let secret = other.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();

    // Another job's workdir holds a file the first job must not see.
    let neighbour = tempfile::tempdir().unwrap();
    let out = run(&sb, python(neighbour.path(), "open('neighbour.txt', 'w').write('mine')")).await;
    assert!(out.success(), "{}", describe(&out));

    let code = format!(
        "import os\n\
         def probe(path):\n\
         \x20   try:\n\
         \x20       with open(path) as f:\n\
         \x20           return 'READ ' + f.read(20)\n\
         \x20   except OSError as e:\n\
         \x20       return 'denied ' + type(e).__name__\n\
         print('secret', probe({secret:?}))\n\
         print('root', probe('/root/.bashrc'), os.path.exists('/root'))\n\
         print('shadow', probe('/etc/shadow'))\n\
         print('neighbour', probe({neighbour:?}))\n\
         try:\n\
         \x20   open('/usr/gymforge-test', 'w')\n\
         \x20   print('usr WRITABLE')\n\
         except OSError as e:\n\
         \x20   print('usr denied', type(e).__name__)\n\
         print('entries', sorted(os.listdir('.')))\n",
        secret = secret.to_string_lossy(),
        neighbour = neighbour.path().join("neighbour.txt").to_string_lossy(),
    );
    let out = run(&sb, python(work.path(), &code)).await;
    assert!(out.success(), "{}", describe(&out));
    let text = &out.stdout;
    assert!(!text.contains("READ"), "{}", describe(&out));
    assert!(!text.contains("WRITABLE"), "{}", describe(&out));
    assert!(text.contains("secret denied"), "{}", describe(&out));
    assert!(text.contains("root denied"), "{}", describe(&out));
    assert!(text.contains("neighbour denied"), "{}", describe(&out));
    assert!(text.contains("usr denied"), "{}", describe(&out));
    assert!(text.contains("entries []"), "{}", describe(&out));
    assert!(!Path::new("/usr/gymforge-test").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_environment_does_not_leak() {
    let sb = sandbox();
    assert_eq!(std::env::var("GYMFORGE_TEST_SECRET").as_deref(), Ok("sk-must-not-leak"));
    let work = tempfile::tempdir().unwrap();
    let out = run(&sb, job(work.path(), &["sh", "-c", "env; cat /proc/1/environ 2>/dev/null"], 60)).await;
    assert!(out.success(), "{}", describe(&out));
    assert!(!out.stdout.contains("sk-must-not-leak"), "{}", describe(&out));
    assert!(!out.stdout.contains("GYMFORGE_TEST_SECRET"), "{}", describe(&out));
    assert!(out.stdout.contains(&format!("HOME={INSIDE}")), "{}", describe(&out));
    assert!(out.stdout.contains("OMP_NUM_THREADS=1"), "{}", describe(&out));
}

/// Processes whose command line is exactly `sleep 1000`.
fn sleepers() -> Vec<u32> {
    processes(|c| c == b"sleep\x001000\x00")
}

/// Processes whose command line (NUL-separated, as in /proc) `matches`.
fn processes(matches: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| matches(&c)) {
            found.push(pid);
        }
    }
    found
}

/// Polls `find` every 100 ms, `tries` times at most, until `done` holds of what it found (the
/// kernel tears a killed sandbox down, or starts a process, a moment later); returns the last
/// finding.
async fn poll(find: impl Fn() -> Vec<u32>, done: impl Fn(&[u32]) -> bool, tries: u32) -> Vec<u32> {
    for _ in 0..tries {
        let found = find();
        if done(&found) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    find()
}

async fn no_sleepers_left() -> Vec<u32> {
    poll(sleepers, <[u32]>::is_empty, 50).await
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_the_whole_job() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    for command in [&["sleep", "1000"][..], &["sh", "-c", "sleep 1000 & sleep 1000"][..]] {
        let started = std::time::Instant::now();
        let out = run(&sb, job(work.path(), command, 2)).await;
        assert!(out.timed_out, "{command:?}: {}", describe(&out));
        assert!(!out.success());
        assert!(out.elapsed_secs >= 1.9, "{command:?}: {}", describe(&out));
        assert!(started.elapsed() < Duration::from_secs(60), "{command:?} took {:?}", started.elapsed());
        let left = no_sleepers_left().await;
        assert!(left.is_empty(), "{command:?}: `sleep 1000` survived as {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn output_is_capped() {
    let sb = sandbox();
    let cap = config().max_output_bytes;
    let work = tempfile::tempdir().unwrap();
    let code = "import sys\n\
                chunk = 'x' * 1024 * 1024\n\
                for _ in range(50):\n    sys.stdout.write(chunk)\n\
                sys.stderr.write('e' * 3 * 1024 * 1024)\n\
                print('done', file=sys.stderr)";
    let out = run(&sb, python(work.path(), code)).await;
    assert_eq!(out.exit_code, Some(0), "{}", out.status_line());
    assert!(out.output_truncated);
    assert_eq!(out.stdout.len(), cap);
    assert_eq!(out.stderr.len(), cap);
    assert!(out.stderr.bytes().all(|b| b == b'e'));

    let out = run(&sb, python(work.path(), "print('small')")).await;
    assert!(!out.output_truncated);
    assert_eq!(out.stdout, "small\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_are_read_only_or_writable_as_asked() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("train.csv"), "a,b\n1,2\n").unwrap();
    // tempdirs are private to their owner; the sandbox user needs to read this one.
    set_mode(data.path(), 0o755);
    set_mode(&data.path().join("train.csv"), 0o644);
    let out_dir = tempfile::tempdir().unwrap();

    let mut j = python(
        work.path(),
        "import os\n\
         print('data', open('data/train.csv').read().splitlines()[1])\n\
         try:\n    open('data/new.txt', 'w')\n    print('data WRITABLE')\n\
         except OSError as e:\n    print('data read-only', type(e).__name__)\n\
         open('/output/model.txt', 'w').write('weights')\n\
         print('output ok')",
    );
    j.mounts = vec![
        Mount { host: data.path().to_path_buf(), inside: format!("{INSIDE}/data"), writable: false },
        Mount { host: out_dir.path().to_path_buf(), inside: "/output".to_string(), writable: true },
    ];
    let out = run(&sb, j).await;
    assert!(out.success(), "{}", describe(&out));
    assert!(out.stdout.contains("data 1,2"), "{}", describe(&out));
    assert!(out.stdout.contains("data read-only"), "{}", describe(&out));
    assert!(out.stdout.contains("output ok"), "{}", describe(&out));
    assert!(!data.path().join("new.txt").exists());
    assert_eq!(std::fs::read_to_string(out_dir.path().join("model.txt")).unwrap(), "weights");
    // The mountpoint was created in the work directory on the host, empty.
    assert!(work.path().join("data").is_dir());
    assert!(!work.path().join("data/train.csv").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_limits_apply() {
    let env = tokio::task::block_in_place(env);
    let cfg = SandboxConfig { memory_mb: 1024, max_file_mb: 1, cpu_secs: 2, ..config() };
    let sb = BwrapSandbox::new(&cfg, env).unwrap();
    let work = tempfile::tempdir().unwrap();

    let code = "import resource as r\n\
                for name in ['AS', 'CPU', 'NPROC', 'FSIZE', 'NOFILE', 'CORE']:\n\
                \x20   print(name, r.getrlimit(getattr(r, 'RLIMIT_' + name))[0])";
    let out = run(&sb, python(work.path(), code)).await;
    assert!(out.success(), "{}", describe(&out));
    // With per-job control groups the job's process limit is its pids.max, and RLIMIT_NPROC
    // (which counts all jobs of the sandbox user) is a backstop 64 jobs wide.
    let nproc = if sb.cgroups().is_some() { cfg.max_processes * 64 } else { cfg.max_processes };
    let expected = format!("AS {}\nCPU 2\nNPROC {nproc}\nFSIZE {}\nNOFILE 1024\nCORE 0\n", 1024 * 1024 * 1024u64, 1024 * 1024);
    assert_eq!(out.stdout, expected, "{}", describe(&out));

    let code = "try:\n    b = bytearray(1500 * 1024 * 1024)\n    print('allocated')\n\
                except MemoryError:\n    print('memory limited')\n\
                try:\n    open('big.bin', 'wb').write(b'x' * (2 * 1024 * 1024))\n    print('wrote')\n\
                except OSError as e:\n    print('file limited', e.errno)";
    let out = run(&sb, python(work.path(), code)).await;
    assert!(out.success(), "{}", describe(&out));
    assert!(out.stdout.contains("memory limited"), "{}", describe(&out));
    assert!(out.stdout.contains("file limited 27"), "{}", describe(&out));

    let out = run(&sb, job(work.path(), &["python", "-c", "while True: pass"], 120)).await;
    assert!(!out.timed_out && !out.success(), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_jobs_are_sandbox_errors() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    let mut j = python(work.path(), "print(1)");
    j.mounts = vec![Mount { host: PathBuf::from("/nonexistent/gymforge"), inside: "/data".to_string(), writable: false }];
    let err = sb.run(j).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(err.to_string().contains("/nonexistent/gymforge"), "{err}");

    let mut j = python(work.path(), "print(1)");
    j.workdir_inside = "/usr/local/work".to_string();
    assert!(sb.run(j).await.is_err());
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Processes whose command line is exactly `sleep 1001` (the shell test's; `sleep 1000` is
/// the job timeout test's).
fn shell_sleepers() -> Vec<u32> {
    processes(|c| c == b"sleep\x001001\x00")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shell_keeps_its_state_survives_timeouts_and_leaves_nothing_behind() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();
    let control = tempfile::tempdir().unwrap();
    std::fs::write(control.path().join("init.sh"), "greet() { echo \"hello $1\"; }\n").unwrap();
    std::fs::create_dir(work.path().join("sub")).unwrap();
    let mut shell = sb.shell(job(work.path(), &[], 10), control.path()).await.expect("the shell starts");
    let t = Duration::from_secs(10);

    let out = shell.run("cd sub && export ANSWER=42 && X=local", t).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", describe(&out));
    let out = shell.run("pwd; echo \"$ANSWER $X\"; greet agent; echo oops >&2; false", t).await.unwrap();
    assert_eq!(out.stdout, format!("{INSIDE}/sub\n42 local\nhello agent\noops\n"), "state persists, stderr is merged");
    assert_eq!(out.exit_code, Some(1));
    let out = shell.run("if then", t).await.unwrap();
    assert!(out.stdout.contains("syntax error") && out.exit_code != Some(0), "{}", describe(&out));
    let out = shell.run("cat; echo read-nothing", t).await.unwrap();
    assert_eq!(out.stdout.trim(), "read-nothing", "commands read /dev/null, not the protocol");

    // A timeout kills the command and whatever it left running, but not the shell.
    let out = shell.run("sleep 1001 & sleep 1001", Duration::from_secs(2)).await.unwrap();
    assert!(out.timed_out, "{}", describe(&out));
    assert!(shell.is_alive());
    let out = shell.run("echo \"still in $(pwd)\"", t).await.unwrap();
    // bash may first report the killed background job.
    assert_eq!(out.stdout.trim().lines().last(), Some(format!("still in {INSIDE}/sub").as_str()), "{}", describe(&out));
    assert!(poll(shell_sleepers, <[u32]>::is_empty, 50).await.is_empty(), "the timed-out processes are gone");

    // A stuck shell (a loop of builtins) is killed and reported dead.
    let out = shell.run("while :; do :; done", Duration::from_secs(1)).await.unwrap();
    assert!(out.timed_out && out.stdout.contains("restarted"), "{}", describe(&out));
    assert!(!shell.is_alive());

    // `exit` ends the shell; a background process dies with the sandbox when the shell is dropped.
    let mut shell = sb.shell(job(work.path(), &[], 10), control.path()).await.unwrap();
    shell.run("sleep 1001 &", t).await.unwrap();
    assert_eq!(poll(shell_sleepers, |found| !found.is_empty(), 50).await.len(), 1, "the background process runs");
    let out = shell.run("exit 3", t).await.unwrap();
    assert!(out.stdout.contains("exited") && !shell.is_alive(), "{}", describe(&out));
    drop(shell);
    assert!(poll(shell_sleepers, <[u32]>::is_empty, 50).await.is_empty(), "no process survives the shell");

    // Output is capped and the shell goes on.
    let mut shell = sb.shell(job(work.path(), &[], 10), control.path()).await.unwrap();
    let out = shell.run("head -c 5000000 /dev/zero | tr '\\0' x; echo; echo end", t).await.unwrap();
    assert!(out.output_truncated && out.stdout.len() < 1_100_000, "{} bytes", out.stdout.len());
    assert_eq!(shell.run("echo after", t).await.unwrap().stdout, "after\n");
}

/// Waits until no process's command line contains `marker`; returns those still there.
async fn none_left(marker: &str) -> Vec<u32> {
    poll(|| processes(|c| String::from_utf8_lossy(c).contains(marker)), <[u32]>::is_empty, 100).await
}

/// The rest of the hostile-code suite (network, other files, secrets, memory, CPU, timeouts and
/// output are above): a fork bomb, gigabytes of output, processes left running after a normal
/// exit, the project checkout, writing outside the job. Each is contained and reported as the
/// job's failure; the sandbox goes on running jobs.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_code_is_contained_and_the_runtime_carries_on() {
    let sb = sandbox();
    let work = tempfile::tempdir().unwrap();

    // A fork bomb hits the process limit and the timeout; none of its processes survive. With
    // per-job control groups, a job running beside it can still start its own processes.
    let bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)";
    let neighbour = tempfile::tempdir().unwrap();
    let forks =
        "import subprocess\nps = [subprocess.Popen(['sleep', '0.2']) for _ in range(40)]\nfor p in ps:\n    p.wait()\nprint('forked 40')";
    let (out, beside) = tokio::join!(run(&sb, job(work.path(), &["python", "-c", bomb, "gymforge-forkbomb-marker"], 6)), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        run(&sb, python(neighbour.path(), forks)).await
    });
    assert!(!out.success(), "{}", describe(&out));
    assert!(none_left("gymforge-forkbomb-marker").await.is_empty(), "fork bomb processes survived");
    if let Some(limits) = sb.cgroups() {
        assert_eq!(beside.stdout, "forked 40\n", "with {limits}, the neighbour is unaffected: {}", describe(&beside));
    }

    // Two gigabytes on stdout: kept to the cap, the job reported, the host unharmed.
    let out = run(&sb, job(work.path(), &["sh", "-c", "head -c 2000000000 /dev/zero; echo finished >&2"], 120)).await;
    assert!(out.output_truncated, "{}", out.status_line());
    assert_eq!(out.stdout.len(), config().max_output_bytes);

    // A job that exits normally leaves nothing running behind it.
    let out = run(&sb, job(work.path(), &["sh", "-c", "sleep 1002 & (setsid sleep 1002 &) ; echo spawned"], 30)).await;
    assert_eq!(out.stdout.trim(), "spawned", "{}", describe(&out));
    assert!(none_left("sleep\u{0}1002").await.is_empty(), "background processes outlived the job");

    // The project checkout and the host's home are out of sight; writing outside the job fails.
    let checkout = env!("CARGO_MANIFEST_DIR");
    let code = format!(
        "import os\n\
         for p in [{checkout:?} + '/Cargo.toml', '/root', '/home', '/etc/passwd-']:\n\
         \x20   print(p, os.path.exists(p))\n\
         for p in ['/gymforge-escape', '/home/escape', '/etc/escape', '/var/tmp/escape']:\n\
         \x20   try:\n\
         \x20       open(p, 'w').write('x')\n\
         \x20       print('WROTE', p)\n\
         \x20   except OSError:\n\
         \x20       print('refused', p)\n"
    );
    let out = run(&sb, python(work.path(), &code)).await;
    assert!(out.success(), "{}", describe(&out));
    assert!(out.stdout.contains(&format!("{checkout}/Cargo.toml False")), "{}", describe(&out));
    assert!(out.stdout.contains("/root False"), "{}", describe(&out));
    assert!(!out.stdout.contains("WROTE"), "{}", describe(&out));
    assert!(!Path::new("/gymforge-escape").exists() && !Path::new("/var/tmp/escape").exists());

    // After all of that, an ordinary job still runs.
    let out = run(&sb, python(work.path(), "print('still fine')")).await;
    assert_eq!(out.stdout, "still fine\n", "{}", describe(&out));
}
