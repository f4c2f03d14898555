//! An ECR repository, as an image URI names it (`<account>.dkr.ecr.<region>.amazonaws.com/<name>`): what
//! a blueprint's artifact is looked up in, and what the look-ups of one repository share.

/// An ECR repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EcrRepository {
    /// The registry: the account id.
    pub registry_id: String,
    pub region: String,
    pub name: String,
}

impl EcrRepository {
    /// The repository's URI, without a tag.
    pub fn uri(&self) -> String {
        format!("{}.dkr.ecr.{}.amazonaws.com/{}", self.registry_id, self.region, self.name)
    }
}
