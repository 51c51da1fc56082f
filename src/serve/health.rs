//! What `/healthz` and `/readyz` answer: a passing report (200) or the
//! problems that fail the probe (503), each with the category an operator
//! acts on.

use std::fmt;

/// A probe that passes: 200, with this as the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeReport {
    /// `/healthz`: the process works.
    Healthy,
    /// `/readyz` of a process without leader election: it serves.
    Ready,
    /// `/readyz` of an operator replica that holds the lease.
    Leading,
    /// `/readyz` of an operator replica that stands by: it serves the port,
    /// its controllers wait for the lease.
    Following,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeReport::Healthy => "ok",
            ProbeReport::Ready => "ready",
            ProbeReport::Leading => "ready (leader)",
            ProbeReport::Following => "ready (follower)",
        })
    }
}

/// What kind of problem fails a probe, which says what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemCategory {
    /// Not ready yet (the first list of every watched resource, the first
    /// write of the outputs); passes by itself.
    Starting,
    /// Configuration refused (manifests, a sender's rendering): the last good
    /// one stays in force until the input is fixed.
    Configuration,
    /// Something cannot be written or applied (outputs, the report journal,
    /// a HAProxy reload): a disk or a neighbour process to look at.
    Output,
}

impl ProblemCategory {
    /// The category as the body of a failed probe names it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCategory::Starting => "starting",
            ProblemCategory::Configuration => "configuration",
            ProblemCategory::Output => "output",
        }
    }
}

impl fmt::Display for ProblemCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a probe fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{category}: {detail}")]
pub struct ProbeProblem {
    pub category: ProblemCategory,
    /// What is wrong, naming the file or resource and the fix.
    pub detail: String,
}

impl ProbeProblem {
    pub fn new(category: ProblemCategory, detail: impl Into<String>) -> Self {
        ProbeProblem {
            category,
            detail: detail.into(),
        }
    }
}

/// A probe that fails: 503, one line per problem. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.problems))]
pub struct ProbeFailure {
    problems: Vec<ProbeProblem>,
}

impl ProbeFailure {
    /// One problem alone.
    pub fn single(category: ProblemCategory, detail: impl Into<String>) -> Self {
        ProbeFailure {
            problems: vec![ProbeProblem::new(category, detail)],
        }
    }

    /// `passing` when there are no problems, else the failure listing them.
    pub fn check(
        problems: Vec<ProbeProblem>,
        passing: ProbeReport,
    ) -> Result<ProbeReport, ProbeFailure> {
        if problems.is_empty() {
            Ok(passing)
        } else {
            Err(ProbeFailure { problems })
        }
    }

    pub fn problems(&self) -> &[ProbeProblem] {
        &self.problems
    }
}

fn lines(problems: &[ProbeProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_problem_passes_with_the_report_given() {
        assert_eq!(
            ProbeFailure::check(Vec::new(), ProbeReport::Leading),
            Ok(ProbeReport::Leading)
        );
        assert_eq!(ProbeReport::Leading.to_string(), "ready (leader)");
    }

    #[test]
    fn a_failure_lists_each_problem_on_its_line_with_its_category() {
        let failure = ProbeFailure::check(
            vec![
                ProbeProblem::new(ProblemCategory::Configuration, "pool.yaml: poool"),
                ProbeProblem::new(ProblemCategory::Output, "routes.json: disk full"),
            ],
            ProbeReport::Healthy,
        )
        .unwrap_err();
        assert_eq!(
            failure.to_string(),
            "configuration: pool.yaml: poool\noutput: routes.json: disk full"
        );
        assert_eq!(failure.problems()[1].category, ProblemCategory::Output);
    }
}
