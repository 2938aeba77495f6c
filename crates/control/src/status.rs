//! The open-ended status vocabularies AWS sends: training-job status, secondary status, and the
//! EC2 spot instance action.
//!
//! Owns the enums and their string forms. Every enum keeps values it does not know as
//! `Unknown(text)` — AWS documents SecondaryStatus as "subject to change" — so a new value is
//! data for the decision engine to ignore with a reason, never a parse failure or a panic.
//! It does not decide what a status means for recovery: the decision module does.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares a string-valued enum with an `Unknown(String)` catch-all.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version does not know, kept verbatim.
            Unknown(String),
        }

        impl $name {
            /// The text AWS uses for this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $text, )+
                    Self::Unknown(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $( $text => Self::$variant, )+
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Ok(Self::from(text.as_str()))
            }
        }
    };
}

open_enum! {
    /// `TrainingJobStatus`: the primary lifecycle state of a SageMaker training job.
    pub enum TrainingJobStatus {
        /// Running, or restarting after a spot interruption (SageMaker handles it).
        InProgress => "InProgress",
        /// Finished successfully.
        Completed => "Completed",
        /// Ended with an error; `FailureReason` says which.
        Failed => "Failed",
        /// Being stopped (by the user or a stopping condition); a final event follows.
        Stopping => "Stopping",
        /// Stopped; `SecondaryStatus` says by whom or by which condition.
        Stopped => "Stopped",
    }
}

impl TrainingJobStatus {
    /// Completed, Failed or Stopped: the job will not change status again (SageMaker may still
    /// touch it, e.g. for a warm pool or the debugger's rule statuses).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TrainingJobStatus::Completed | TrainingJobStatus::Failed | TrainingJobStatus::Stopped
        )
    }
}

open_enum! {
    /// `SecondaryStatus`: the detailed state within a primary status.
    pub enum SecondaryStatus {
        /// Preparing to start.
        Starting => "Starting",
        /// Launching instances.
        LaunchingMlInstances => "LaunchingMLInstances",
        /// Preparing the training stack.
        PreparingTrainingStack => "PreparingTrainingStack",
        /// Downloading input data.
        Downloading => "Downloading",
        /// Downloading the training image.
        DownloadingTrainingImage => "DownloadingTrainingImage",
        /// The training code is running.
        Training => "Training",
        /// Uploading model artifacts.
        Uploading => "Uploading",
        /// Stopping.
        Stopping => "Stopping",
        /// Stopped by the user's StopTrainingJob: never relaunch.
        Stopped => "Stopped",
        /// Stopped because MaxRuntimeInSeconds ran out.
        MaxRuntimeExceeded => "MaxRuntimeExceeded",
        /// Completed.
        Completed => "Completed",
        /// Failed.
        Failed => "Failed",
        /// The spot instance was reclaimed; SageMaker restarts the job while MaxWait allows.
        Interrupted => "Interrupted",
        /// Stopped because MaxWaitTimeInSeconds ran out (spot capacity lost or never came).
        MaxWaitTimeExceeded => "MaxWaitTimeExceeded",
        /// The job is being updated.
        Updating => "Updating",
        /// The job is restarting.
        Restarting => "Restarting",
        /// Waiting for capacity.
        Pending => "Pending",
    }
}

open_enum! {
    /// `instance-action` of an EC2 Spot Instance Interruption Warning.
    pub enum SpotAction {
        /// The instance will be terminated (its volumes may go with it).
        Terminate => "terminate",
        /// The instance will be stopped and may come back with its EBS volumes.
        Stop => "stop",
        /// The instance will be hibernated (memory saved) and may come back; no lead time.
        Hibernate => "hibernate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_round_trip_and_unknown_values_are_kept() {
        for text in ["InProgress", "Completed", "Failed", "Stopping", "Stopped"] {
            assert_eq!(TrainingJobStatus::from(text).as_str(), text);
        }
        assert_eq!(
            SecondaryStatus::from("LaunchingMLInstances"),
            SecondaryStatus::LaunchingMlInstances
        );
        let odd = SecondaryStatus::from("Hibernating");
        assert_eq!(odd, SecondaryStatus::Unknown("Hibernating".into()));
        assert_eq!(serde_json::to_string(&odd).unwrap(), "\"Hibernating\"");
        let parsed: SpotAction = serde_json::from_str("\"hibernate\"").unwrap();
        assert_eq!(parsed, SpotAction::Hibernate);
        assert!(serde_json::from_str::<SpotAction>("3").is_err());
    }
}
