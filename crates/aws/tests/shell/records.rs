//! What the ledger records carry for `spotcheck report`: each entry's lineage, the give-up's
//! job facts, and a lineage summary's facts of every attempt (with the tags ListTags gives).

use serde_json::{json, Value};
use spotcheck_aws::Outcome;
use spotcheck_control::Tags;

use crate::fakes::*;
use crate::sagemaker::handler;

const ROOT: &str = "resnet50-spot";
const R2: &str = "resnet50-spot-r2-90d9a5df";
const R3: &str = "resnet50-spot-r3-c078143a";

fn event_tags(fixture: &str) -> Tags {
    Tags::from_json(&serde_json::to_vec(&detail(fixture)["Tags"]).unwrap()).unwrap()
}

#[tokio::test]
async fn entries_name_their_lineage_and_a_give_up_its_job() {
    let h = handler();
    h.jobs.add_tags(
        describe_from_json(&detail("sagemaker-inprogress-interrupted.json")),
        list_tags_fixture("list-tags-resnet50-spot.json"),
    );
    h.jobs.add(
        describe_fixture("describe-failed-algorithm.json"),
        &[("spotcheck:enabled", "true")],
    );
    let log = MemoryLog::default();
    for fixture in [
        "sagemaker-inprogress-interrupted.json",
        "sagemaker-failed-algorithm.json",
    ] {
        h.handle(&event(fixture), now(), &log).await.unwrap();
    }
    let interruption = h.ledger.json("interruptions/jobs/resnet50-spot/1.json");
    assert_eq!(interruption["lineage"], json!({"root": ROOT, "attempt": 1}));
    let give_up = h
        .ledger
        .json("give-ups/gpt2-small-spot/gpt2-small-spot.json");
    assert_eq!(
        give_up["lineage"],
        json!({"root": "gpt2-small-spot", "attempt": 1})
    );
    let job = &give_up["job"];
    assert_eq!(job["job_name"], "gpt2-small-spot");
    assert_eq!(
        (job["status"].clone(), job["attempt"].clone()),
        (json!("Failed"), json!(1))
    );
    assert_eq!(
        (
            job["training_seconds"].clone(),
            job["billable_seconds"].clone()
        ),
        (json!(420), json!(126)),
        "the describe's times: {job}"
    );
    assert!(job["on_demand_usd_per_hour"].as_f64().unwrap_or(0.0) > 0.0);
    // The decision lines are unchanged by the records' lineage.
    let lines = log.decisions();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.get("lineage").is_none()));
}

#[tokio::test]
async fn a_lineage_summary_carries_every_attempts_facts() {
    let h = handler();
    h.jobs.add_tags(
        describe_fixture("describe-stopped-maxwait.json"),
        list_tags_fixture("list-tags-resnet50-spot.json"),
    );
    h.jobs.add_tags(
        describe_fixture("describe-failed-capacity.json"),
        event_tags("sagemaker-failed-capacity.json"),
    );
    h.jobs.add_tags(
        describe_fixture("describe-completed-lineage.json"),
        event_tags("sagemaker-completed-lineage.json"),
    );
    let log = MemoryLog::default();
    let handled = h
        .handle(&event("sagemaker-completed-lineage.json"), now(), &log)
        .await
        .unwrap();
    assert_eq!(handled.outcome, Outcome::Recorded);
    // The completed job's tags, then the two earlier attempts' (their attempt and resume step).
    assert_eq!(h.jobs.calls.get("ListTags"), 3);
    let summary = h.ledger.json("savings/lineages/resnet50-spot.json");
    let attempts: Vec<Value> = summary["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            json!([
                a["job_name"],
                a["attempt"],
                a["resume_step"],
                a["secondary_status"],
                a["interruptions"],
                a["sagemaker_restarts"],
                a["training_seconds"]
            ])
        })
        .collect();
    assert_eq!(
        attempts,
        [
            json!([ROOT, 1, null, "MaxWaitTimeExceeded", 2, 1, 5400]),
            json!([R2, 2, 1200, "Failed", 0, 0, 0]),
            json!([R3, 3, 1200, "Completed", 0, 0, 7260]),
        ]
    );
    assert!(summary["attempts"][0]["phases"].as_array().unwrap().len() == 11);
    let job = h.ledger.json(&format!("savings/jobs/{R3}.json"));
    assert_eq!(
        json!([
            job["attempt"],
            job["resume_step"],
            job["interruptions"],
            job["sagemaker_restarts"]
        ]),
        json!([3, 1200, 0, 0])
    );
}
