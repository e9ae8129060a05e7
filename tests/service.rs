//! `ues init` writes a hardened systemd unit for its data directory, and systemd's own checker
//! (`systemd-analyze verify`, installed by scripts/setup.sh) accepts it without a warning.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn verify(unit: &std::path::Path) -> (bool, String) {
    let out = Command::new("systemd-analyze").arg("verify").arg(unit).output().expect("systemd-analyze runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn init_writes_a_hardened_unit_that_systemd_accepts() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(["init", "--data-dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = dir.join("ues.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert_eq!(std::fs::metadata(&unit).unwrap().permissions().mode() & 0o777, 0o600);
    let data_dir = std::fs::canonicalize(&dir).unwrap();
    for line in [
        format!(
            "ExecStart={} run --data-dir {}",
            std::fs::canonicalize(env!("CARGO_BIN_EXE_ues")).unwrap().display(),
            data_dir.display()
        ),
        format!("ReadWritePaths={}", data_dir.display()),
        "ProtectSystem=strict".into(),
        "NoNewPrivileges=yes".into(),
        "Restart=on-failure".into(),
        "LimitNOFILE=65536".into(),
    ] {
        assert!(text.lines().any(|l| l == line), "the unit has {line:?}:\n{text}");
    }
    for placeholder in ["@BIN@", "@DATA_DIR@", "@USER@", "@GROUP@"] {
        assert!(!text.contains(placeholder), "{placeholder} is filled in:\n{text}");
    }
    // It runs as the user who made the data directory (`sudo -u ues ues init` makes it `ues`).
    let me = Command::new("id").arg("-un").output().unwrap();
    let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
    assert!(text.lines().any(|l| l == format!("User={me}")), "User={me}:\n{text}");

    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "CI must install systemd-analyze (scripts/setup.sh)");
        eprintln!("SKIPPED: systemd-analyze verify (not installed; run scripts/setup.sh)");
        return;
    }
    let (ok, said) = verify(&unit);
    assert!(ok && !said.contains("ues.service"), "systemd-analyze verify: {said}");
    // The check can fail: a misspelt directive is reported.
    let broken = root.path().join("broken.service");
    std::fs::write(&broken, text.replace("ProtectSystem=strict", "ProtectSystm=strict")).unwrap();
    let (_, said) = verify(&broken);
    assert!(said.contains("ProtectSystm"), "a misspelt directive is reported: {said}");
}
