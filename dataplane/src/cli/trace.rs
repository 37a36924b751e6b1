//! `carwash trace`: builds a packet from the flags, runs the dataplane's
//! program on it against the live policy maps (see `dataplane::trace`: no
//! live counter or table moves) and prints the verdict: tenant, class,
//! allow entry, backend, action, drop reason and the output frame.
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;

use anyhow::{Result, bail};
use dataplane::trace::{self, Flow, Proto, Request, Side, Trace};

use super::{Format, PinArgs, output};

#[derive(clap::Args)]
pub struct TraceArgs {
    /// Source address (the client for --from uplink; the VIP for a reply --from fabric).
    #[arg(long)]
    src: IpAddr,
    /// Source port (a fixed default, so that repeated traces take the same Maglev bucket).
    #[arg(long, default_value_t = 40000)]
    sport: u16,
    /// Destination address.
    #[arg(long)]
    dst: IpAddr,
    /// Destination port (required for tcp and udp).
    #[arg(long)]
    dport: Option<u16>,
    #[arg(long, value_enum, default_value_t)]
    proto: Proto,
    /// Which program gets the packet: the uplink's (from the internet) or the
    /// fabric's (VXLAN from a VPC machine).
    #[arg(long, value_enum, default_value_t)]
    from: Side,
    /// A TCP SYN, with an MSS option (else an ACK).
    #[arg(long)]
    syn: bool,
    /// The SYN's MSS option (default 1460 for IPv4, 1440 for IPv6).
    #[arg(long, requires = "syn")]
    mss: Option<u16>,
    /// Length of the IP packet, headers included (the payload fills it up).
    #[arg(long, value_name = "BYTES")]
    len: Option<usize>,
    /// IPv4 without "don't fragment" (TCP stacks set it; some UDP senders do not).
    #[arg(long)]
    no_df: bool,
    /// --from fabric: the VNI (default: the tenant whose VIP --src is).
    #[arg(long)]
    vni: Option<u32>,
    /// --from fabric: the sending machine's VTEP (default: the machine the
    /// forward flow is steered to).
    #[arg(long)]
    vtep: Option<Ipv4Addr>,
    /// Run in this network namespace (a name under /run/netns, or a path):
    /// the agent's, when it runs in one. The program's route lookups
    /// (bpf_fib_lookup) answer for the namespace the trace runs in.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    #[command(flatten)]
    pin: PinArgs,
    /// `table`: aligned columns; `json`: one complete JSON document.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

fn request(a: &TraceArgs) -> Result<Request> {
    let dport = match (a.proto, a.dport) {
        (Proto::Icmp, d) => d.unwrap_or(0),
        (_, Some(d)) => d,
        (p, None) => bail!(
            "--dport is required for {} packets",
            if p == Proto::Udp { "udp" } else { "tcp" }
        ),
    };
    if a.syn && a.proto != Proto::Tcp {
        bail!("--syn is for tcp packets");
    }
    if a.from == Side::Uplink && (a.vni.is_some() || a.vtep.is_some()) {
        bail!("--vni and --vtep describe the tunnel of --from fabric");
    }
    Ok(Request {
        flow: Flow {
            src: a.src,
            dst: a.dst,
            sport: a.sport,
            dport,
            proto: a.proto,
            syn: a.syn,
            mss: a.mss,
            len: a.len,
            df: !a.no_df,
        },
        from: a.from,
        vni: a.vni,
        vtep: a.vtep,
        netns: a.netns.clone(),
    })
}

fn lines<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join("\n")
}

fn print_table(t: &Trace) {
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let mut out = output::pairs();
    out.add_row(vec![
        "input".into(),
        format!(
            "{}\n({} bytes, from the {})",
            lines(&t.input),
            t.input_len,
            t.from.word()
        ),
    ]);
    out.add_row(vec![
        "tenant".into(),
        dash(t.tenant.as_ref().map(|x| format!("{} (id {})", x.name, x.id))),
    ]);
    out.add_row(vec!["class".into(), dash(t.class.map(str::to_string))]);
    out.add_row(vec![
        "allow entry".into(),
        dash(t.allow.as_ref().map(|a| {
            format!(
                "{} ({})",
                a.prefix,
                if a.classes.is_empty() {
                    "no class".to_string()
                } else {
                    a.classes.join(", ")
                }
            )
        })),
    ]);
    out.add_row(vec![
        "backend".into(),
        dash(t.backend.as_ref().map(|b| {
            let what = match b.index {
                Some(i) => format!("{} {i}", b.role),
                None => format!("{} (no machine of the tenant)", b.role),
            };
            let how = match b.source {
                "output" => "the packet was sent there",
                "maps" => "chosen by the maps; not sent",
                _ => "the tunnel frame came from it",
            };
            format!("{what}: vtep {}, mac {} ({how})", b.vtep, b.mac)
        })),
    ]);
    out.add_row(vec!["action".to_string(), t.action.into()]);
    out.add_row(vec!["drop reason".into(), dash(t.drop_reason.map(str::to_string))]);
    out.add_row(vec![
        "output".into(),
        match (&t.output, t.output_len) {
            (Some(h), Some(n)) => format!("{}\n({n} bytes)", lines(h)),
            _ => "-".into(),
        },
    ]);
    let p = &t.program;
    out.add_row(vec![
        "program".into(),
        format!(
            "{}, tag {}{}{}",
            p.name,
            p.tag,
            match &p.attached_tag {
                Some(a) if *a == p.tag => ", the attached program".to_string(),
                Some(a) => format!(", NOT the attached program (tag {a})"),
                None => ", no program pinned".to_string(),
            },
            match (&p.netns, &p.ingress) {
                (ns, Some(i)) => format!(
                    "; run in {} as arriving on {} (ifindex {})",
                    ns.as_deref()
                        .map(|n| format!("netns {n}"))
                        .unwrap_or("this netns".into()),
                    i.name.as_deref().unwrap_or("?"),
                    i.ifindex
                ),
                (ns, None) => format!(
                    "; run in {}",
                    ns.as_deref()
                        .map(|n| format!("netns {n}"))
                        .unwrap_or("this netns".into())
                ),
            }
        ),
    ]);
    for n in &t.notes {
        out.add_row(vec!["note".into(), output::wrap(n, 100)]);
    }
    println!("{out}");
}

pub fn run(args: TraceArgs) -> Result<ExitCode> {
    let req = request(&args)?;
    let pins = args.pin.open()?;
    let t = trace::trace(&pins, &req)?;
    match args.output {
        Format::Json => output::print_json(&t)?,
        Format::Table => print_table(&t),
    }
    Ok(ExitCode::SUCCESS)
}
