//! `tenantry validate`: every error class with a fixture, exit statuses, and the shipped config and workflows.

mod support;

use std::path::Path;

use support::{copy_dir, fixtures, repo, tenantry};

/// Problems printed by validate (lines of stdout that look like `FILE:LINE:COL: msg`).
fn problem_lines(stdout: &str) -> Vec<String> {
    stdout.lines().filter(|l| l.contains(": ") && !l.ends_with("problem(s) found")).map(str::to_string).collect()
}

/// Lays out a case: `tenantry.toml` (the base config, or the case's own) and its workflows.
fn case_dir(config: &str, workflows: Option<&Path>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let migrations = fixtures().join("migrations");
    let config = config.replace("\"../migrations/", &format!("\"{}/", migrations.display()));
    std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
    match workflows {
        Some(w) => copy_dir(w, &dir.path().join("workflows")),
        None => std::fs::create_dir(dir.path().join("workflows")).unwrap(),
    }
    dir
}

/// Each case's `expect.txt` lists every problem validate must print, as
/// `FILE:LINE:COL: message-prefix`; nothing else may be printed.
fn check_case(case: &Path, dir: &Path) {
    let expect = std::fs::read_to_string(case.join("expect.txt")).unwrap();
    let migrations = fixtures().join("migrations");
    let expected: Vec<String> = expect
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.replace("@MIGRATIONS@", &migrations.display().to_string()))
        .collect();
    let run = tenantry(dir, &["validate"], &[]);
    assert_eq!(run.code(), 1, "{}: validate must exit 1\n{}", case.display(), run.all());
    let lines = problem_lines(&run.stdout());
    for e in &expected {
        assert!(
            lines.iter().any(|l| l.starts_with(e.as_str())),
            "{}: expected a line starting with\n  {e}\n{}",
            case.display(),
            run.all()
        );
    }
    assert_eq!(lines.len(), expected.len(), "{}: unexpected extra problems\n{}", case.display(), run.all());
    assert!(run.stdout().contains(&format!("{} problem(s) found", expected.len())), "{}", run.all());
    // A password in a host URL never shows up, whatever went wrong.
    assert!(!run.all().contains("s3cret-pw"), "{}", run.all());
}

fn cases(kind: &str) -> Vec<std::path::PathBuf> {
    let mut cases: Vec<_> =
        std::fs::read_dir(fixtures().join("validate").join(kind)).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    assert!(!cases.is_empty());
    cases
}

#[test]
fn every_workflow_error_class_is_reported_at_its_line() {
    let base = std::fs::read_to_string(fixtures().join("validate/base.toml")).unwrap();
    let cases = cases("workflows");
    assert!(cases.len() >= 20, "one fixture per error class");
    for case in cases {
        let dir = case_dir(&base, Some(&case.join("workflows")));
        check_case(&case, dir.path());
    }
}

#[test]
fn every_config_error_class_is_reported_at_its_line() {
    for case in cases("config") {
        let config = std::fs::read_to_string(case.join("tenantry.toml")).unwrap();
        let dir = case_dir(&config, None);
        check_case(&case, dir.path());
    }
}

#[test]
fn the_base_fixture_itself_is_valid() {
    let base = std::fs::read_to_string(fixtures().join("validate/base.toml")).unwrap();
    let dir = case_dir(&base, None);
    let run = tenantry(dir.path(), &["validate"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    assert!(
        run.stdout().starts_with("ok: tenantry.toml — 4 service(s), 3 tenant(s), 0 workflow(s), 9 migration(s)"),
        "{}",
        run.all()
    );
}

#[test]
fn shipped_config_and_workflows_are_valid() {
    let run = tenantry(&repo(), &["--config", "deploy/reference.toml", "validate"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    assert!(run.stdout().contains("5 workflow(s)"), "{}", run.all());
    // Every shipped workflow uses only kinds this version runs: no warning at all.
    assert!(!run.stderr().contains("warning"), "{}", run.all());
    let run = tenantry(&repo(), &["--config", "deploy/reference.toml", "validate", "--json"], &[]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout()).expect("json");
    assert_eq!(report["ok"], true);
    assert_eq!(report["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn json_output_lists_problems_with_positions() {
    let base = std::fs::read_to_string(fixtures().join("validate/base.toml")).unwrap();
    let dir = case_dir(&base, Some(&fixtures().join("validate/workflows/impossible_cron/workflows")));
    let run = tenantry(dir.path(), &["validate", "--json"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout()).expect("json");
    assert_eq!(report["ok"], false);
    let p = &report["problems"][0];
    assert_eq!(p["file"], "workflows/w.toml");
    assert_eq!((p["line"].as_u64(), p["col"].as_u64()), (Some(1), Some(12)));
    assert!(p["message"].as_str().unwrap().contains("never fires"));
}

#[test]
fn environment_and_flags_override_the_file() {
    let base = std::fs::read_to_string(fixtures().join("validate/base.toml")).unwrap();
    let dir = case_dir(&base, None);
    // A bad value from the environment is reported naming the variable.
    let run = tenantry(dir.path(), &["validate"], &[("TENANTRY__HOSTS__PG__MAX_CONCURRENCY", "0")]);
    assert_eq!(run.code(), 1, "{}", run.all());
    assert!(
        run.stdout()
            .contains("host pg: max_concurrency must be at least 1 (set by TENANTRY__HOSTS__PG__MAX_CONCURRENCY)"),
        "{}",
        run.all()
    );
    // --set wins over the environment.
    let run = tenantry(
        dir.path(),
        &["--set", "hosts.pg.max_concurrency=2", "validate"],
        &[("TENANTRY__HOSTS__PG__MAX_CONCURRENCY", "0")],
    );
    assert_eq!(run.code(), 0, "{}", run.all());
    // Unknown keys from the environment are errors too.
    let run = tenantry(dir.path(), &["validate"], &[("TENANTRY__REDIS__URLL", "redis://x")]);
    assert_eq!(run.code(), 1, "{}", run.all());
    assert!(run.all().contains("unknown field `urll`"), "{}", run.all());
}

#[test]
fn missing_config_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = tenantry(dir.path(), &["validate"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    assert!(run.stderr().contains("tenantry.toml does not exist"), "{}", run.all());
    let run = tenantry(dir.path(), &["no-such-command"], &[]);
    assert_eq!(run.code(), 2, "{}", run.all());
}

#[test]
fn unreachable_catalog_database_exits_3_without_leaking_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let config = r#"
[hosts.sys]
engine = "postgres"
url = "postgres://admin:hunter2-secret@127.0.0.1:1/postgres"

[catalog]
source = "sql"

[catalog.sql]
host = "sys"
database = "system"
query = "SELECT id, name, status, labels, placements FROM tenants"
"#;
    std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    for args in [&["validate"][..], &["tenants"][..], &["tenants", "--json"][..]] {
        let run = tenantry(dir.path(), args, &[]);
        assert_eq!(run.code(), 3, "{args:?}: {}", run.all());
        assert!(run.stderr().contains("cannot reach the catalog database system on host sys"), "{}", run.all());
        assert!(!run.all().contains("hunter2"), "{}", run.all());
    }
}
