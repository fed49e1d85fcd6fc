//! Command-line parsers for the library's [`Choice`] enums, with the names
//! and help the library gives them.

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use mpc::choice::Choice;

/// Parses one of `T`'s names (`value_parser = choice::of::<Emit>()`).
#[derive(Clone)]
pub struct Parser<T>(PhantomData<T>);

pub fn of<T: Choice>() -> Parser<T> {
    Parser(PhantomData)
}

fn values<T: Choice>() -> Vec<PossibleValue> {
    T::ALL
        .iter()
        .map(|c| match c.help() {
            "" => PossibleValue::new(c.name()),
            help => PossibleValue::new(c.name()).help(help),
        })
        .collect()
}

impl<T: Choice> TypedValueParser for Parser<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        // clap's own parser gives the usual "invalid value ... [possible values: ...]" error.
        let name = PossibleValuesParser::new(values::<T>()).parse_ref(cmd, arg, value)?;
        T::from_name(&name).ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(values::<T>().into_iter()))
    }
}
