//! The stand-in app as a process, for the local demo:
//! `standin-app --zone ZONE --listen ADDR --ca-out FILE` serves HTTPS for `*.ZONE` and `ZONE` on ADDR,
//! answering 200 with a page naming the host asked for, until killed. It writes the CA that issued its
//! certificate to FILE, then prints the address it listens on.

use previewd_testkit::StandInApp;

#[derive(Debug)]
struct Args {
    zone: String,
    listen: String,
    ca_out: String,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut zone, mut listen, mut ca_out) = (None, "127.0.0.1:0".to_owned(), None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--zone" => zone = Some(value),
            "--listen" => listen = value,
            "--ca-out" => ca_out = Some(value),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(Args { zone: zone.ok_or("--zone is required")?, listen, ca_out: ca_out.ok_or("--ca-out is required")? })
}

fn fail(message: String) -> ! {
    eprintln!("standin-app: {message}");
    eprintln!("usage: standin-app --zone ZONE [--listen 127.0.0.1:PORT] --ca-out FILE");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => fail(e),
    };
    let app = StandInApp::start_on(&args.zone, &args.listen)
        .await
        .unwrap_or_else(|e| fail(format!("cannot serve on {}: {e}", args.listen)));
    if let Err(e) = std::fs::copy(app.ca_file(), &args.ca_out) {
        fail(format!("cannot write the CA to {}: {e}", args.ca_out));
    }
    println!("{}", app.addr());
    std::future::pending::<()>().await;
}
