//! A real JMS broker pair for the lab: Apache ActiveMQ 5.x (Debian's
//! `activemq`, installed by `cargo xtask setup`) on two core machines as a
//! shared-store master/slave pair, and JMS clients (`tests/jms/JmsClient.java`)
//! each in one JVM driven line by line, so a test pays JVM start-up once per
//! role and not once per step.
//!
//! Both brokers point at one KahaDB directory: whichever takes the file lock
//! is master and opens its transport; the other retries the lock every
//! [`LOCK_ACQUIRE_SLEEP_MS`] and opens its transport only once it is master.
//! Every process here is killed and reaped on drop.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netlab::netns::NetNs;

/// The broker launcher of the Debian package.
pub const BROKER_JAR: &str = "/usr/share/activemq/bin/activemq.jar";
const ACTIVEMQ_HOME: &str = "/usr/share/activemq";
/// The package's jars (client, JMS API, management API, slf4j) and a
/// silent slf4j binding for the clients.
const CLIENT_CLASSPATH: &str = "/usr/share/activemq/lib/*:/usr/share/java/slf4j-nop.jar";
/// The port the brokers' OpenWire transport listens on.
pub const OPENWIRE_PORT: u16 = 61616;
/// How often a slave retries the store's lock. ActiveMQ's default is 10 s,
/// which alone would be most of a failover; the lab retries five times a
/// second.
pub const LOCK_ACQUIRE_SLEEP_MS: u64 = 200;
/// Small, quick-starting JVMs: the lab machine is shared and has two cores.
const JVM_OPTS: &[&str] = &[
    "-Xms32m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
];

const BROKER_XML: &str = r#"<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="${carwash.broker}" useJmx="false"
          advisorySupport="false" schedulerSupport="false" dataDirectory="${activemq.data}">
    <persistenceAdapter>
      <kahaDB directory="${carwash.store}">
        <locker><shared-file-locker lockAcquireSleepInterval="LOCK_SLEEP_MS"/></locker>
      </kahaDB>
    </persistenceAdapter>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://0.0.0.0:${carwash.port}"/>
    </transportConnectors>
  </broker>
</beans>
"#;

/// The broker logs through log4j 1.2, which says nothing without a
/// configuration: lock waits and take-overs are what a failing run needs.
const LOG4J: &str = "log4j.rootLogger=INFO, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=%d{ISO8601} %-5p %c{1} - %m%n
";

/// Fails (never skips) when the broker is not installed, saying how to get it.
pub fn require_activemq() {
    assert!(
        Path::new(BROKER_JAR).exists() && Path::new("/usr/bin/javac").exists(),
        "{BROKER_JAR} or javac is missing: run `cargo xtask setup` (installs Debian's activemq and a JDK)"
    );
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of Java's `System.nanoTime()`
/// on Linux, so the clients' timestamps and the test's compare directly.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The shared store and the brokers' configuration, under `dir`.
pub struct SharedStore {
    dir: PathBuf,
    config: PathBuf,
    log4j: PathBuf,
    store: PathBuf,
}

impl SharedStore {
    pub fn new(dir: &Path) -> Result<SharedStore> {
        let store = dir.join("kahadb");
        std::fs::create_dir_all(&store)?;
        let config = dir.join("broker.xml");
        // The schema checks integers before placeholders are resolved.
        let xml = BROKER_XML.replace("LOCK_SLEEP_MS", &LOCK_ACQUIRE_SLEEP_MS.to_string());
        std::fs::write(&config, xml)?;
        let log4j = dir.join("log4j.properties");
        std::fs::write(&log4j, LOG4J)?;
        Ok(SharedStore {
            dir: dir.to_path_buf(),
            config,
            log4j,
            store,
        })
    }

    /// Starts broker `name` inside `ns` on the shared store; it becomes
    /// master if it gets the lock, slave otherwise.
    pub fn start_broker(&self, ns: &NetNs, name: &str) -> Result<Broker> {
        let base = self.dir.join(name);
        std::fs::create_dir_all(base.join("data"))?;
        let log = base.join("broker.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = ns.command("java")?;
        cmd.args(JVM_OPTS)
            .arg(format!("-Dcarwash.broker={name}"))
            .arg(format!("-Dcarwash.store={}", self.store.display()))
            .arg(format!("-Dcarwash.port={OPENWIRE_PORT}"))
            .arg(format!("-Dactivemq.home={ACTIVEMQ_HOME}"))
            .arg(format!("-Dactivemq.base={}", base.display()))
            .arg(format!("-Dactivemq.conf={}", base.display()))
            .arg(format!("-Dactivemq.data={}", base.join("data").display()))
            .arg(format!("-Dlog4j.configuration=file:{}", self.log4j.display()))
            .args(["-jar", BROKER_JAR, "start"])
            .arg(format!("xbean:file:{}", self.config.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().with_context(|| format!("starting broker {name}"))?;
        Ok(Broker {
            child,
            name: name.to_string(),
            log,
        })
    }
}

/// A broker JVM; SIGKILLed and reaped on drop.
pub struct Broker {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Broker {
    /// Whether its OpenWire transport listens, i.e. it is master. Read from
    /// the process's own view of its namespace's sockets, which costs no
    /// child process and so can be polled tightly.
    pub fn listening(&self) -> bool {
        let pid = self.child.id();
        ["tcp", "tcp6"].iter().any(|f| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
                .map(|t| listens_on(&t, OPENWIRE_PORT))
                .unwrap_or(false)
        })
    }

    /// Whether the JVM has exited (it should not before it is killed).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a machine dying would; returns once the process is
    /// reaped, so its sockets and its lock on the store are gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a `/proc/net/tcp{,6}` table has a listening socket on `port`.
fn listens_on(table: &str, port: u16) -> bool {
    // Columns: sl local_address rem_address st ...; LISTEN is state 0A.
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3
            && f[3] == "0A"
            && f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
    })
}

/// Compiles the JMS client into `dir` (about a second of javac).
pub fn compile_client(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("jms/JmsClient.java");
    let classes = dir.join("classes");
    std::fs::create_dir_all(&classes)?;
    let out = Command::new("javac")
        .args(["-nowarn", "-cp", CLIENT_CLASSPATH, "-d"])
        .arg(&classes)
        .arg(&src)
        .output()
        .context("running javac")?;
    if !out.status.success() {
        bail!("javac {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(classes)
}

/// One line a client printed: its first word, the `System.nanoTime()` that
/// follows it (if any), and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    pub word: String,
    pub at_ns: Option<u64>,
    pub line: String,
}

impl Said {
    fn parse(line: String) -> Said {
        let mut w = line.split(' ');
        let word = w.next().unwrap_or_default().to_string();
        let at_ns = match word.as_str() {
            "sent" | "consumed" => w.nth(1),
            _ => w.next(),
        }
        .and_then(|n| n.parse().ok());
        Said { word, at_ns, line }
    }

    /// A `received` line's message body.
    pub fn body(&self) -> Option<&str> {
        (self.word == "received").then(|| self.line.splitn(3, ' ').nth(2).unwrap_or(""))
    }
}

/// A JMS client JVM (`JmsClient.java`) in a namespace; SIGKILLed and
/// reaped on drop.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub role: String,
}

impl Client {
    /// Starts the JVM in `ns` with the client's connection `url` on `queue`;
    /// it loads its classes, then waits for commands.
    pub fn start(ns: &NetNs, classes: &Path, role: &str, url: &str, queue: &str) -> Result<Client> {
        let mut cmd = ns.command("java")?;
        cmd.args(JVM_OPTS)
            .arg("-cp")
            .arg(format!("{}:{CLIENT_CLASSPATH}", classes.display()))
            .args(["JmsClient", url, queue])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("starting the {role} JVM"))?;
        let stdin = child.stdin.take().context("client stdin")?;
        let stdout = child.stdout.take().context("client stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Client {
            child,
            stdin,
            lines,
            role: role.to_string(),
        })
    }

    pub fn send_line(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("writing to the {} JVM", self.role))
    }

    /// The next line within `timeout`, if any; an `error` line or the JVM
    /// gone is an error.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Said>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                let said = Said::parse(line);
                if said.word == "error" {
                    bail!("{} JVM: {}", self.role, said.line);
                }
                Ok(Some(said))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                bail!("the {} JVM ended ({status:?})", self.role)
            }
        }
    }

    /// Waits for a line starting with `word`, collecting the lines before.
    pub fn expect(&mut self, word: &str, timeout: Duration) -> Result<(Said, Vec<Said>)> {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left)? {
                Some(s) if s.word == word => return Ok((s, before)),
                Some(s) => before.push(s),
                None => bail!(
                    "the {} JVM did not say {word:?} within {timeout:?}; it said {before:?}",
                    self.role
                ),
            }
        }
    }

    /// Asks the JVM to close its connection and exit.
    pub fn quit(mut self) {
        let _ = self.send_line("quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `failover:` URL to `host:port` that retries quickly and without
/// back-off, so the client's own delay after the path is back stays small.
pub fn failover_url(host: std::net::IpAddr, port: u16) -> String {
    format!(
        "failover:(tcp://{host}:{port}?connectionTimeout=2000)?randomize=false&initialReconnectDelay=20&maxReconnectDelay=100&useExponentialBackOff=false"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:F0B0 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0200007F:F0B0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
";
        assert!(listens_on(table, 61616));
        assert!(!listens_on(table, 8080), "an established socket is not listening");
    }

    #[test]
    fn client_lines_parse() {
        let s = Said::parse("received 123 acme order 7".into());
        assert_eq!(
            (s.word.as_str(), s.at_ns, s.body()),
            ("received", Some(123), Some("acme order 7"))
        );
        let s = Said::parse("sent 200 456".into());
        assert_eq!(s.at_ns, Some(456));
        assert_eq!(Said::parse("interrupted 9".into()).at_ns, Some(9));
    }
}
