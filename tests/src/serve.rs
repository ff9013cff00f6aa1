//! `hsmd serve --config FILE` on a data folder that `hsmd dev` provisioned, and runs of
//! `hsmd` that are expected to fail at start-up.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    Daemon,
    daemon::{Mode, Profile, START_TIMEOUT, terminate},
    tools::CmdOutput,
};

impl Daemon {
    /// Stops the daemon and starts `hsmd serve --config CONFIG` on the same data folder.
    /// The endpoint is taken from the config's `listen`; the client is the dev admin.
    pub async fn restart_as_serve(&mut self, config: &Path) {
        self.stop().await;
        let table: toml::Table = fs::read_to_string(config)
            .expect("read config")
            .parse()
            .expect("config is TOML");
        let listen = table["listen"].as_str().expect("listen in config");
        let dev = Profile::parse(
            &fs::read_to_string(self.data_dir.join("client.toml")).expect("dev client.toml"),
        )
        .expect("dev profile");
        let profile = self.scratch().join("serve-client.toml");
        let mut out = toml::Table::new();
        out.insert("endpoint".into(), format!("https://{listen}").into());
        out.insert("server_name".into(), dev.server_name.into());
        for (k, v) in [
            ("ca_cert", dev.ca_cert),
            ("client_cert", dev.client_cert),
            ("client_key", dev.client_key),
        ] {
            out.insert(k.into(), v.display().to_string().into());
        }
        fs::write(&profile, out.to_string()).expect("write serve profile");
        self.mode = Mode::Serve {
            config: config.to_path_buf(),
            profile,
        };
        self.launch().await;
    }

    /// Runs `hsmd ARGS` to completion (for start-up failures); returns what it printed.
    /// Panics if it is still running after `START_TIMEOUT`.
    pub async fn run_hsmd_to_exit(&mut self, args: &[&std::ffi::OsStr]) -> CmdOutput {
        self.starts += 1;
        let mut cmd = self.hsmd_command();
        cmd.args(args);
        let command = format!("hsmd {args:?}");
        let mut child = cmd.spawn().expect("spawn hsmd");
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                terminate(&child);
                let _ = child.wait();
                panic!(
                    "`{command}` was expected to exit but still runs\nstderr:\n{}",
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        CmdOutput {
            command,
            code: status.code(),
            stdout: self.stdout_text(),
            stderr: self.stderr_text(),
        }
    }
}
