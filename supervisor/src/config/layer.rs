//! The checks one layer of agent settings (`[defaults]` or `[agents.NAME]`) passes on its own,
//! whatever it is merged with: every problem collected, each at its key or value.

use super::resolve::{env_name_problem, Ctx, MAX_CPU_QUOTA};
use super::schema::Settings;
use super::units::{Count, Dur, Limit, Real, Size};
use super::ConfigError;
use toml::Spanned;

pub(super) fn check_path(ctx: &Ctx<'_>, p: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
    if p.get_ref().is_empty() {
        return Err(ctx.at_value(p.span(), format!("{key}: the path is empty")));
    }
    if p.get_ref().contains('\0') {
        return Err(ctx.at_value(
            p.span(),
            format!("{key}: the path contains a NUL character"),
        ));
    }
    Ok(())
}

pub(super) fn check_positive(
    ctx: &Ctx<'_>,
    d: &Option<Spanned<Dur>>,
    key: &str,
) -> Result<(), ConfigError> {
    match d {
        Some(d) if d.get_ref().0.is_zero() => {
            Err(ctx.at_value(d.span(), format!("{key} must be greater than 0")))
        }
        _ => Ok(()),
    }
}

fn check_nonzero_limit<T>(
    ctx: &Ctx<'_>,
    v: &Option<Spanned<Limit<T>>>,
    key: &str,
    is_zero: impl Fn(&T) -> bool,
) -> Result<(), ConfigError> {
    match v {
        Some(v) if v.get_ref().0.as_ref().is_some_and(is_zero) => Err(ctx.at_value(
            v.span(),
            format!("{key} must be greater than 0 (write \"unlimited\" for no limit)"),
        )),
        _ => Ok(()),
    }
}

/// The checks a layer passes on its own, whatever it is merged with.
pub(super) fn check_layer(ctx: &Ctx<'_>, s: &Settings) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    if let Some(command) = &s.command {
        match command.get_ref().first() {
            None => errs.push(ctx.at_value(command.span(), "command is empty")),
            Some(program) if program.get_ref().is_empty() => {
                errs.push(ctx.at_value(program.span(), "the program name is empty"))
            }
            Some(_) => {}
        }
        for arg in command.get_ref() {
            if arg.get_ref().contains('\0') {
                errs.push(ctx.at_value(arg.span(), "command contains a NUL character"));
            }
        }
    }
    for (key, value) in s.env.iter().flatten() {
        if let Some(problem) = env_name_problem(key.get_ref()) {
            errs.push(ctx.at(
                key.span().start,
                format!("environment variable name {:?} {problem}", key.get_ref()),
            ));
        }
        if value.get_ref().contains('\0') {
            errs.push(ctx.at_value(
                value.span(),
                format!(
                    "environment variable {} contains a NUL character",
                    key.get_ref()
                ),
            ));
        }
    }
    if let Some(cwd) = &s.cwd {
        errs.extend(check_path(ctx, cwd, "cwd").err());
    }
    for p in s.readonly_paths.iter().flatten() {
        errs.extend(check_path(ctx, p, "readonly_paths").err());
    }
    for p in s.writable_paths.iter().flatten() {
        errs.extend(check_path(ctx, p, "writable_paths").err());
    }
    errs.extend(check_nonzero_limit(ctx, &s.memory, "memory", |Size(b)| *b == 0).err());
    errs.extend(check_nonzero_limit(ctx, &s.disk, "disk", |Size(b)| *b == 0).err());
    errs.extend(check_nonzero_limit(ctx, &s.cpu_time, "cpu_time", |Dur(d)| d.is_zero()).err());
    errs.extend(check_nonzero_limit(ctx, &s.pids, "pids", |Count(n)| *n == 0).err());
    errs.extend(check_nonzero_limit(ctx, &s.open_files, "open_files", |Count(n)| *n == 0).err());
    if let Some(q) = &s.cpu_quota {
        if let Some(Real(x)) = q.get_ref().0 {
            if !(x > 0.0 && x.is_finite()) {
                errs.push(ctx.at_value(
                    q.span(),
                    format!(
                        "cpu_quota must be a fraction of one core greater than 0 \
                         (write \"unlimited\" for no limit), found {x}"
                    ),
                ));
            } else if x > MAX_CPU_QUOTA {
                errs.push(ctx.at_key(
                    q.span(),
                    format!(
                        "cpu_quota: {x:e} cores is more than the kernel's CPU bandwidth \
                         control accepts (at most {MAX_CPU_QUOTA}; write \"unlimited\" for no \
                         limit)"
                    ),
                ));
            }
        }
    }
    if let Some(namespaces) = &s.namespaces {
        for (i, ns) in namespaces.iter().enumerate() {
            if namespaces[..i].iter().any(|n| n.get_ref() == ns.get_ref()) {
                errs.push(ctx.at_value(
                    ns.span(),
                    format!("namespace \"{}\" is listed twice", ns.get_ref().as_str()),
                ));
            }
        }
    }
    for (key, v) in [("user", &s.user), ("group", &s.group)] {
        if let Some(v) = v {
            if v.get_ref().is_empty() || v.get_ref().contains('\0') {
                errs.push(ctx.at_value(
                    v.span(),
                    format!("{key} must be a non-empty name or number without NUL"),
                ));
            }
        }
    }
    for name in s.env_pass.iter().flatten() {
        if let Some(problem) = env_name_problem(name.get_ref()) {
            errs.push(ctx.at_value(
                name.span(),
                format!("env_pass: variable name {:?} {problem}", name.get_ref()),
            ));
        }
    }
    for (key, d) in [
        ("heartbeat_interval", &s.heartbeat_interval),
        ("heartbeat_timeout", &s.heartbeat_timeout),
        ("stall_timeout", &s.stall_timeout),
        ("startup_timeout", &s.startup_timeout),
        ("wall_time", &s.wall_time),
        ("sample_interval", &s.sample_interval),
    ] {
        errs.extend(check_positive(ctx, d, key).err());
    }
    for code in s.no_retry_exit_codes.iter().flatten() {
        if !(0..=255).contains(code.get_ref()) {
            errs.push(ctx.at_value(
                code.span(),
                format!(
                    "no_retry_exit_codes: an exit code is between 0 and 255, found {}",
                    code.get_ref()
                ),
            ));
        }
    }
    if let Some(b) = &s.backoff {
        if let Some(f) = &b.factor {
            let Real(x) = *f.get_ref();
            if !(x >= 1.0 && x.is_finite()) {
                errs.push(ctx.at_value(
                    f.span(),
                    format!("backoff.factor must be at least 1.0, found {x}"),
                ));
            }
        }
        if let Some(j) = &b.jitter {
            let Real(x) = *j.get_ref();
            if !(0.0..=1.0).contains(&x) {
                errs.push(ctx.at_value(
                    j.span(),
                    format!("backoff.jitter must be between 0.0 and 1.0, found {x}"),
                ));
            }
        }
    }
    if let Some(i) = &s.intensity {
        errs.extend(check_positive(ctx, &i.period, "intensity.period").err());
    }
    if let Some(f) = s.breaker.as_ref().and_then(|b| b.failures.as_ref()) {
        if *f.get_ref() == 0 {
            errs.push(ctx.at_value(f.span(), "breaker.failures must be at least 1"));
        }
    }
    if let Some(q) = &s.quarantine_after {
        if *q.get_ref() == 0 {
            errs.push(ctx.at_value(q.span(), "quarantine_after must be at least 1"));
        }
    }
    if let Some(m) = &s.max_instances {
        if *m.get_ref() == 0 {
            errs.push(ctx.at_value(m.span(), "max_instances must be at least 1"));
        }
    }
    if let Some(n) = &s.instances {
        if !(1..=super::daemon::MAX_INSTANCES).contains(n.get_ref()) {
            let m = format!(
                "instances must be between 1 and {}, found {}",
                super::daemon::MAX_INSTANCES,
                n.get_ref()
            );
            errs.push(ctx.at_value(n.span(), m));
        }
    }
    errs
}
