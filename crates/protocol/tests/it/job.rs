//! Multi-host job roots: a step is complete only when every participant holds the checkpoint
//! its commit names; validation, resume and retention agree on it.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use spotcheck_protocol::{
    abandon_after, committed_checkpoints, complete_steps, execute_retention, manifest_digest,
    open_latest_complete, plan_retention_counting, prune_commits, validate_root, write_commit,
    JobCommit, Participant, StepVerdict, COMMIT_FORMAT_VERSION, MANIFEST_FILE,
};

use crate::util::write_checkpoint;

const HOSTS: [&str; 2] = ["algo-1", "algo-2"];

/// Both hosts write `step`, then the commit naming both manifests.
fn job_step(root: &Path, step: u64) {
    let participants = HOSTS
        .iter()
        .enumerate()
        .map(|(rank, ns)| {
            let c = write_checkpoint(root, ns, step);
            Participant {
                rank: rank as u32,
                namespace: (*ns).into(),
                manifest_sha256: manifest_digest(&fs::read(c.dir.join(MANIFEST_FILE)).unwrap()),
            }
        })
        .collect();
    write_commit(
        root,
        &JobCommit {
            format_version: COMMIT_FORMAT_VERSION,
            step,
            world_size: HOSTS.len() as u32,
            created_at_ms: 1,
            meta: None,
            participants,
        },
    )
    .unwrap();
}

fn dir(root: &Path, ns: &str, step: u64) -> std::path::PathBuf {
    root.join(ns).join(format!("step-{step:012}"))
}

#[test]
fn a_torn_checkpoint_on_one_host_makes_the_step_incomplete_for_every_reader() {
    let root = tempfile::tempdir().unwrap();
    job_step(root.path(), 100);
    job_step(root.path(), 200);
    // Step 300: algo-2's checkpoint is torn (its model file truncated) after the commit.
    job_step(root.path(), 300);
    let torn = dir(root.path(), "algo-2", 300).join("model.safetensors");
    fs::write(&torn, b"short").unwrap();
    // Step 400: algo-1 wrote it, algo-2 never did, no commit.
    write_checkpoint(root.path(), "algo-1", 400);

    let report = validate_root(root.path()).unwrap();
    let job = report.job.as_ref().expect("a job root");
    assert_eq!(job.latest_complete_step, Some(200));
    assert_eq!(
        report.latest_valid.as_deref(),
        Some("commit-000000000200.json")
    );
    let s300 = job.steps.iter().find(|s| s.step == 300).unwrap();
    let StepVerdict::Incomplete { problems } = &s300.verdict else {
        panic!("step 300 must be incomplete");
    };
    assert!(
        problems.len() == 1 && problems[0].contains("algo-2"),
        "{problems:?}"
    );
    // The printed report says which host is torn.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["job"]["steps"][2]["status"], "incomplete");

    // Both hosts resume from step 200, though algo-1's 300 and 400 are valid on their own.
    for ns in HOSTS {
        let found = open_latest_complete(root.path(), ns).unwrap().unwrap();
        assert_eq!(found.step(), 200, "{ns}");
        assert_eq!(found.name, format!("{ns}/step-000000000200"));
    }

    // Retention (keep 1) on algo-1 counts only committed steps (trusting the commit for
    // algo-2, whose checkpoints are not its to check): 300 is committed for algo-1, so it is
    // the newest counted; 400 is newer and kept; 100 and 200 go.
    let algo1: Vec<_> = report
        .checkpoints
        .iter()
        .filter(|c| c.namespace.as_deref() == Some("algo-1"))
        .cloned()
        .collect();
    let committed = committed_checkpoints(root.path(), "algo-1", &algo1)
        .unwrap()
        .expect("a job root");
    assert_eq!(
        committed,
        ["100", "200", "300"]
            .iter()
            .map(|s| format!("algo-1/step-000000000{s}"))
            .collect::<BTreeSet<_>>()
    );
    let actions = plan_retention_counting(&algo1, 1, &[], Some(&committed));
    execute_retention(root.path(), &actions).unwrap();
    let left: Vec<u64> = validate_root(root.path())
        .unwrap()
        .checkpoints
        .iter()
        .filter(|c| c.namespace.as_deref() == Some("algo-1"))
        .map(|c| c.step)
        .collect();
    assert_eq!(left, [300, 400]);
    // Commits of steps algo-1 no longer has go too (the newest stays).
    assert_eq!(prune_commits(root.path(), "algo-1").unwrap(), 2);
    assert!(!root.path().join("commit-000000000100.json").exists());
    assert!(root.path().join("commit-000000000300.json").exists());
}

#[test]
fn a_root_without_commits_is_judged_per_host_as_before() {
    let root = tempfile::tempdir().unwrap();
    write_checkpoint(root.path(), "algo-1", 100);
    write_checkpoint(root.path(), "algo-2", 50);
    let report = validate_root(root.path()).unwrap();
    assert!(report.job.is_none());
    assert_eq!(
        report.latest_valid.as_deref(),
        Some("algo-1/step-000000000100")
    );
    let json = serde_json::to_value(&report).unwrap();
    assert!(json.get("job").is_none(), "the printed shape is unchanged");
    assert_eq!(
        open_latest_complete(root.path(), "algo-2")
            .unwrap()
            .map(|c| c.step()),
        Some(50)
    );
}

#[test]
fn a_commit_with_a_missing_host_or_garbage_is_never_complete() {
    let root = tempfile::tempdir().unwrap();
    job_step(root.path(), 10);
    job_step(root.path(), 20);
    fs::remove_dir_all(dir(root.path(), "algo-1", 20)).unwrap();
    fs::write(
        root.path().join("commit-000000000030.json"),
        b"{\"format_version\": 1",
    )
    .unwrap();
    let report = validate_root(root.path()).unwrap();
    let job = report.job.unwrap();
    assert_eq!(job.latest_complete_step, Some(10));
    assert_eq!(job.steps.len(), 3);
    assert!(!job.steps[2].verdict.is_complete());
    assert_eq!(
        open_latest_complete(root.path(), "algo-2")
            .unwrap()
            .map(|c| c.step()),
        Some(10)
    );
    // A host that no commit names has nothing to resume from in a job root.
    write_checkpoint(root.path(), "algo-9", 20);
    assert!(open_latest_complete(root.path(), "algo-9")
        .unwrap()
        .is_none());
}

#[test]
fn complete_steps_lists_what_every_rank_can_resume_from_and_abandon_after_removes_the_rest() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(complete_steps(root.path(), "algo-1").unwrap(), None);
    job_step(root.path(), 100);
    job_step(root.path(), 200);
    job_step(root.path(), 300);
    fs::write(
        dir(root.path(), "algo-2", 300).join("model.safetensors"),
        b"short",
    )
    .unwrap();
    for ns in HOSTS {
        assert_eq!(
            complete_steps(root.path(), ns).unwrap(),
            Some(vec![200, 100]),
            "{ns}"
        );
    }
    // Both ranks resume from 200: algo-1's intact 300 and the commit of 300 are a timeline
    // no rank can resume from.
    let removed = abandon_after(root.path(), "algo-1", 200).unwrap();
    assert_eq!(
        removed,
        ["algo-1/step-000000000300", "commit-000000000300.json"]
    );
    assert!(!dir(root.path(), "algo-1", 300).exists());
    assert!(dir(root.path(), "algo-1", 200).exists() && dir(root.path(), "algo-2", 300).exists());
    assert_eq!(
        abandon_after(root.path(), "algo-2", 200).unwrap(),
        ["algo-2/step-000000000300"]
    );
    assert_eq!(
        validate_root(root.path())
            .unwrap()
            .job
            .unwrap()
            .latest_complete_step,
        Some(200)
    );
    assert!(abandon_after(root.path(), "../x", 200).is_err());
}
