//! The policy contract, as msrnn-policy-api defines it (the one definition shared by the core, the
//! built-ins and plugins): what a policy sees ([`Observation`]), what it answers ([`Decision`]), the
//! [`Policy`] trait, and the core's check of every answer ([`validate`]).

pub use msrnn_policy_api::{
    lowest_scored, newest_first, validate, Context, Decision, Declare, Error, FromParam, Needs, Observation, Param,
    Params, Policy, Result, Rows,
};
