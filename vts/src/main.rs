//! VtsHalChargeTransferTargetTest: checks a running IChargeTransfer service with real processes
//! under real per-app cgroups, real uids and real dma-bufs.
//!
//! Run as root: `chargetransfer-vts [--rpc SOCKET] [--binder DEVICE] [libtest args]`. The same
//! binary re-executes itself as `--child` for each client process it needs.
//!
//! `chargetransfer-vts --faults [--kills N] [--seed S] [--service-log FILE]` runs the fault phase
//! instead (see `faults`): it starts and kills the service itself, from `CT_SERVICE_ARGS`.

mod bench;
mod cases;
mod child;
mod dmem_cases;
mod faults;
mod harness;
mod rng;
mod selinux_cases;
mod stress;
mod transfer_cases;
mod world;

use std::path::PathBuf;
use std::time::Duration;

use chargetransfer::client::Client;
use chargetransfer::kernel::cgroupfs::CgroupFs;
use libtest_mimic::{Arguments, Failed, Trial};

use harness::Env;

type Case = fn(&Env) -> cases::Outcome;
type Cases = &'static [(&'static str, Case)];

const CASES: &[(&str, Case)] = &[
    ("version_and_hash_are_served", cases::version_and_hash_are_served),
    ("charge_on_behalf_lands_on_the_app_cgroup", cases::charge_on_behalf_lands_on_the_app_cgroup),
    ("untrusted_caller_cannot_charge_others", cases::untrusted_caller_cannot_charge_others),
    ("non_dma_buf_fds_are_rejected", cases::non_dma_buf_fds_are_rejected),
    ("release_and_transfer_move_the_numbers", cases::release_and_transfer_move_the_numbers),
    ("killed_client_charges_are_released", cases::killed_client_charges_are_released),
    ("system_heap_enforcer_follows_mem_accounting", cases::system_heap_enforcer_follows_mem_accounting),
    (
        "over_limit_charge_is_refused_while_a_smaller_one_succeeds",
        cases::over_limit_charge_is_refused_while_a_smaller_one_succeeds,
    ),
    ("autoconfig_writes_real_memory_limits_for_a_new_app", cases::autoconfig_writes_real_memory_limits_for_a_new_app),
    ("dump_shows_per_app_charges", cases::dump_shows_per_app_charges),
    (
        "double_hop_gralloc_to_surfaceflinger_to_app_ends_with_the_app_paying",
        transfer_cases::double_hop_gralloc_to_surfaceflinger_to_app_ends_with_the_app_paying,
    ),
    ("an_app_cannot_push_its_buffer_onto_another_app", transfer_cases::an_app_cannot_push_its_buffer_onto_another_app),
    ("offer_and_accept_move_the_charge_with_consent", transfer_cases::offer_and_accept_move_the_charge_with_consent),
    (
        "a_ticket_for_another_process_is_refused_and_still_works_for_its_receiver",
        transfer_cases::a_ticket_for_another_process_is_refused_and_still_works_for_its_receiver,
    ),
    (
        "a_ticket_presented_with_another_buffer_is_refused",
        transfer_cases::a_ticket_presented_with_another_buffer_is_refused,
    ),
    ("a_used_ticket_cannot_be_replayed", transfer_cases::a_used_ticket_cannot_be_replayed),
    (
        "an_expired_offer_leaves_the_charge_where_it_was",
        transfer_cases::an_expired_offer_leaves_the_charge_where_it_was,
    ),
    ("offering_a_buffer_you_do_not_own_is_refused", transfer_cases::offering_a_buffer_you_do_not_own_is_refused),
    (
        "offering_or_pushing_to_a_dead_or_non_existent_process_is_refused",
        transfer_cases::offering_or_pushing_to_a_dead_or_non_existent_process_is_refused,
    ),
    (
        "a_receiver_that_already_pays_is_not_charged_twice",
        transfer_cases::a_receiver_that_already_pays_is_not_charged_twice,
    ),
    (
        "a_buffer_shared_by_three_processes_lands_by_the_documented_rule_when_its_owner_dies",
        transfer_cases::a_buffer_shared_by_three_processes_lands_by_the_documented_rule_when_its_owner_dies,
    ),
    (
        "a_buffer_freed_by_every_holder_without_release_disappears_at_the_next_reconcile",
        transfer_cases::a_buffer_freed_by_every_holder_without_release_disappears_at_the_next_reconcile,
    ),
    (
        "stress_eight_clients_random_workload_matches_procfs",
        stress::stress_eight_clients_random_workload_matches_procfs,
    ),
];

/// Cases that need the kernel to charge the system heap to memcg (`dma_heap.mem_accounting=1`).
const MEM_ACCOUNTING_CASES: &[(&str, Case)] = &[(
    "on_behalf_bytes_the_kernel_charged_to_the_allocator_count_against_the_app",
    cases::on_behalf_bytes_the_kernel_charged_to_the_allocator_count_against_the_app,
)];

/// Cases that need the dmem kernel (the dmem controller and a CMA heap charged to it).
const DMEM_CASES: &[(&str, Case)] = &[
    ("dmem_capacity_lists_the_cma_region", dmem_cases::dmem_capacity_lists_the_cma_region),
    (
        "cma_heap_charges_land_in_the_allocating_process_dmem_current",
        dmem_cases::cma_heap_charges_land_in_the_allocating_process_dmem_current,
    ),
    (
        "an_allocation_over_dmem_max_is_refused_by_the_kernel",
        dmem_cases::an_allocation_over_dmem_max_is_refused_by_the_kernel,
    ),
    ("autoconfig_writes_real_dmem_limits", dmem_cases::autoconfig_writes_real_dmem_limits),
];

/// Cases that need SELinux active with the lane's policy: they run in the `selinux` lane, which
/// runs only them (the other lanes run the rest without SELinux); elsewhere they are reported
/// skipped with the reason.
const SELINUX_CASES: Cases = &[
    ("the_calling_context_reaches_the_service", selinux_cases::the_calling_context_reaches_the_service),
    ("a_trusted_context_can_push_and_charge_on_behalf", selinux_cases::a_trusted_context_can_push_and_charge_on_behalf),
    ("a_trusted_uid_in_an_app_context_is_not_trusted", selinux_cases::a_trusted_uid_in_an_app_context_is_not_trusted),
];

fn take_flag(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    args.remove(i);
    (i < args.len()).then(|| args.remove(i))
}

fn main() {
    let mut raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("--child") {
        child::run();
    }
    if let Some(status) = bench::dispatch(&raw) {
        std::process::exit(status);
    }
    let rpc = take_flag(&mut raw, "--rpc").map(PathBuf::from);
    let binder = take_flag(&mut raw, "--binder");
    let lane = take_flag(&mut raw, "--lane").unwrap_or_else(|| "host".into());
    let cgroup_root =
        take_flag(&mut raw, "--cgroup-root").map_or_else(|| PathBuf::from("/sys/fs/cgroup"), PathBuf::from);
    if let Some(i) = raw.iter().position(|a| a == "--faults") {
        raw.remove(i);
        let code = match faults::Options::from_args(&mut raw, binder, cgroup_root) {
            Ok(opts) => faults::run(opts),
            Err(e) => {
                eprintln!("vts: --faults: {e}");
                2
            }
        };
        println!("faults: lane {lane}, exit {code}");
        std::process::exit(code);
    }
    let mut args = Arguments::from_iter(raw);
    args.test_threads = Some(1);
    let client = match &rpc {
        Some(socket) => Client::connect_rpc(socket),
        None => Client::connect_binder(binder.as_deref(), Duration::from_secs(30)),
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vts: cannot reach the service: {e}");
            std::process::exit(2);
        }
    };
    let env = std::sync::Arc::new(Env {
        exe: std::env::current_exe().expect("own path"),
        cgroup: CgroupFs::new(cgroup_root),
        rpc,
        binder,
        client,
        selinux: lane == "selinux",
    });
    // A case this lane cannot run is listed as skipped, with the reason, never left out. The
    // selinux lane runs only the SELinux cases and the version check; the other lanes the rest.
    let not_here = "the selinux lane runs only the SELinux cases; the other lanes run this one";
    let groups: [(Cases, Option<&str>); 4] = [
        (CASES, None),
        (
            MEM_ACCOUNTING_CASES,
            (!cases::mem_accounting())
                .then_some("the kernel does not charge the system heap (dma_heap.mem_accounting=0)"),
        ),
        (
            DMEM_CASES,
            (lane != "dmem").then_some("needs the dmem controller and a CMA heap charged to it (the dmem lane)"),
        ),
        (SELINUX_CASES, (!env.selinux).then_some("needs SELinux active with the lane's policy (the selinux lane)")),
    ];
    let mut trials = Vec::new();
    for (group, unmet) in groups {
        let selinux_group = std::ptr::eq(group, SELINUX_CASES);
        for (name, case) in group {
            let env = std::sync::Arc::clone(&env);
            let case = *case;
            let elsewhere = env.selinux && !selinux_group && *name != "version_and_hash_are_served";
            let unmet = unmet.or(elsewhere.then_some(not_here));
            if let Some(reason) = unmet {
                println!("skipped: {name}: {reason}");
            }
            trials
                .push(Trial::test(*name, move || case(&env).map_err(Failed::from)).with_ignored_flag(unmet.is_some()));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    println!(
        "vts: {} passed, {} failed, {} skipped (lane {lane})",
        conclusion.num_passed, conclusion.num_failed, conclusion.num_ignored
    );
    conclusion.exit();
}
