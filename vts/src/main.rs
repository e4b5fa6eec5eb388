//! VtsHalChargeTransferTargetTest: checks a running IChargeTransfer service with real processes
//! under real per-app cgroups, real uids and real dma-bufs.
//!
//! Run as root: `chargetransfer-vts [--rpc SOCKET] [--binder DEVICE] [libtest args]`. The same
//! binary re-executes itself as `--child` for each client process it needs.
//!
//! On binder it runs every case once per declared instance of IChargeTransfer (the VINTF
//! manifest's on Android; in the lanes, the instances registered with the service manager) and
//! reports every case skipped, exiting with [`SKIPPED`], when there is none.
//!
//! `chargetransfer-vts --faults [--kills N] [--seed S] [--service-log FILE]` runs the fault phase
//! instead (see `faults`): it starts and kills the service itself, from `CT_SERVICE_ARGS`.

mod allocator_outage;
mod autoconfig_cases;
mod bench;
mod bpf_cases;
mod calls_bench;
mod cases;
mod child;
mod dmem_cases;
mod faults;
mod handoff_cases;
mod harness;
mod memtrack_cases;
mod rng;
mod scan_bench;
mod selinux_cases;
mod stress;
mod transfer_cases;
mod trust_cases;
mod vram_cases;
mod world;

use std::path::PathBuf;
use std::time::Duration;

use chargetransfer::binder;
use chargetransfer::client::Client;
use chargetransfer::kernel::cgroupfs::CgroupFs;
use chargetransfer::service::INSTANCE;
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
    ("an_owner_cannot_release_a_buffer_it_still_holds", trust_cases::an_owner_cannot_release_a_buffer_it_still_holds),
    ("on_behalf_of_init_or_a_kernel_thread_is_refused", trust_cases::on_behalf_of_init_or_a_kernel_thread_is_refused),
    (
        "a_push_the_receiver_never_holds_goes_back_to_its_maker",
        trust_cases::a_push_the_receiver_never_holds_goes_back_to_its_maker,
    ),
    ("an_app_reads_only_its_own_uid", trust_cases::an_app_reads_only_its_own_uid),
    (
        "a_buffer_apps_pass_on_is_paid_by_whoever_still_holds_it",
        handoff_cases::a_buffer_apps_pass_on_is_paid_by_whoever_still_holds_it,
    ),
    (
        "an_app_that_sends_a_buffer_over_binder_and_closes_it_stops_paying",
        handoff_cases::an_app_that_sends_a_buffer_over_binder_and_closes_it_stops_paying,
    ),
    (
        "a_chain_and_a_shared_buffer_over_binder_follow_the_holders",
        handoff_cases::a_chain_and_a_shared_buffer_over_binder_follow_the_holders,
    ),
    (
        "a_receiver_over_its_limit_leaves_the_charge_with_the_sender",
        handoff_cases::a_receiver_over_its_limit_leaves_the_charge_with_the_sender,
    ),
    (
        "autoconfig_never_overwrites_a_limit_it_did_not_write",
        autoconfig_cases::autoconfig_never_overwrites_a_limit_it_did_not_write,
    ),
    (
        "a_second_autoconfig_run_rewrites_nothing_the_kernel_holds",
        autoconfig_cases::a_second_autoconfig_run_rewrites_nothing_the_kernel_holds,
    ),
    (
        "a_process_counts_as_exiting_only_when_every_thread_is",
        handoff_cases::a_process_counts_as_exiting_only_when_every_thread_is,
    ),
    (
        "stress_eight_clients_random_workload_matches_procfs",
        stress::stress_eight_clients_random_workload_matches_procfs,
    ),
];

/// Cases that need the BPF scan backend to load (not the dmem lane's kernel: no BPF_SYSCALL).
const BPF_CASES: Cases = &[
    ("bpf_scan_gives_the_procfs_answer", bpf_cases::bpf_scan_gives_the_procfs_answer),
    ("bpf_scan_stays_whole_while_processes_die", bpf_cases::bpf_scan_stays_whole_while_processes_die),
    ("bpf_scan_reads_iterators_pinned_in_bpffs", bpf_cases::bpf_scan_reads_iterators_pinned_in_bpffs),
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
    (
        "a_failed_dmem_write_leaves_the_limit_with_the_service",
        autoconfig_cases::a_failed_dmem_write_leaves_the_limit_with_the_service,
    ),
];

/// Cases that need the simulated VRAM device (`vts/kernel/vramsim`, loaded in the dmem lane).
const VRAM_CASES: Cases = &[
    ("the_vram_region_is_registered_and_served", vram_cases::the_vram_region_is_registered_and_served),
    (
        "eviction_moves_vram_from_dmem_to_the_owner_memcg_and_restore_moves_it_back",
        vram_cases::eviction_moves_vram_from_dmem_to_the_owner_memcg_and_restore_moves_it_back,
    ),
    (
        "an_on_behalf_vram_buffer_is_evicted_to_the_app_memcg",
        vram_cases::an_on_behalf_vram_buffer_is_evicted_to_the_app_memcg,
    ),
    (
        "reclaim_evicts_the_least_recently_restored_unpinned_buffer_and_never_a_pinned_one",
        vram_cases::reclaim_evicts_the_least_recently_restored_unpinned_buffer_and_never_a_pinned_one,
    ),
    (
        "eviction_advice_covers_the_request_and_never_names_a_pinned_buffer",
        vram_cases::eviction_advice_covers_the_request_and_never_names_a_pinned_buffer,
    ),
    (
        "pinning_past_the_region_pin_max_is_refused_with_a_typed_error",
        vram_cases::pinning_past_the_region_pin_max_is_refused_with_a_typed_error,
    ),
    (
        "vram_larger_than_ram_follows_the_region_and_advice_keeps_to_the_eviction_budget",
        vram_cases::vram_larger_than_ram_follows_the_region_and_advice_keeps_to_the_eviction_budget,
    ),
    (
        "the_foreground_app_keeps_its_vram_when_the_full_region_needs_room",
        vram_cases::the_foreground_app_keeps_its_vram_when_the_full_region_needs_room,
    ),
];

/// Cases that need SELinux active with the lane's policy: they run in the `selinux` lane, which
/// runs only them (the other lanes run the rest without SELinux); elsewhere they are reported
/// skipped with the reason.
const SELINUX_CASES: Cases = &[
    ("the_calling_context_reaches_the_service", selinux_cases::the_calling_context_reaches_the_service),
    ("a_trusted_context_can_push_and_charge_on_behalf", selinux_cases::a_trusted_context_can_push_and_charge_on_behalf),
    ("a_trusted_uid_in_an_app_context_is_not_trusted", selinux_cases::a_trusted_uid_in_an_app_context_is_not_trusted),
];
/// Issue 17: the memtrack HAL the service also registers (kernel binder only), `chargectl top`.
const MEMTRACK_CASES: Cases = &[
    ("memtrack_keeps_aosps_vts_contract", memtrack_cases::memtrack_keeps_aosps_vts_contract),
    (
        "memtrack_lets_an_app_read_only_itself_and_system_read_anyone",
        memtrack_cases::memtrack_lets_an_app_read_only_itself_and_system_read_anyone,
    ),
    (
        "memtrack_after_the_double_hop_matches_the_ledger_and_the_kernel",
        memtrack_cases::memtrack_after_the_double_hop_matches_the_ledger_and_the_kernel,
    ),
    (
        "memtrack_after_a_death_matches_the_ledger_and_the_kernel",
        memtrack_cases::memtrack_after_a_death_matches_the_ledger_and_the_kernel,
    ),
    ("chargectl_top_shows_who_pays", memtrack_cases::chargectl_top_shows_who_pays),
];

/// Issue 17's eviction case: needs a vram region (a dmem `drm/` region with a dma-heap).
const MEMTRACK_VRAM_CASES: Cases =
    &[("memtrack_after_an_eviction_matches_the_ledger", memtrack_cases::memtrack_after_an_eviction_matches_the_ledger)];

/// Issue 17's trace counters: needs tracefs in the guest.
const TRACE_CASES: Cases = &[(
    "trace_counters_reach_tracefs_when_a_total_changes",
    memtrack_cases::trace_counters_reach_tracefs_when_a_total_changes,
)];

/// Exit status of a run in which nothing could be tested (automake's SKIP).
const SKIPPED: i32 = 77;

/// How long to wait for the first instance: in the lanes the service registers while the suite
/// starts.
const INSTANCE_WAIT: Duration = Duration::from_secs(30);

/// The full service names of the declared IChargeTransfer instances, waiting up to
/// [`INSTANCE_WAIT`] for one.
fn declared_instances(device: Option<&str>) -> Result<Vec<String>, String> {
    let interface = INSTANCE.rsplit_once('/').map_or(INSTANCE, |(interface, _)| interface);
    binder::open_driver(device, 0)?;
    let deadline = std::time::Instant::now() + INSTANCE_WAIT;
    loop {
        let found = binder::declared_instances(interface)?;
        if !found.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(found.into_iter().map(|name| format!("{interface}/{name}")).collect());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

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
    if raw.get(1).map(String::as_str) == Some("--main-thread-exits") {
        handoff_cases::main_thread_exits();
    }
    if let Some(status) = bench::dispatch(&raw) {
        std::process::exit(status);
    }
    if let Some(status) = scan_bench::dispatch(&raw) {
        std::process::exit(status);
    }
    if let Some(status) = calls_bench::dispatch(&raw) {
        std::process::exit(status);
    }
    let rpc = take_flag(&mut raw, "--rpc").map(PathBuf::from);
    let binder = take_flag(&mut raw, "--binder");
    let lane = take_flag(&mut raw, "--lane").unwrap_or_else(|| "host".into());
    let cgroup_root =
        take_flag(&mut raw, "--cgroup-root").map_or_else(|| PathBuf::from("/sys/fs/cgroup"), PathBuf::from);
    if let Some(i) = raw.iter().position(|a| a == "--allocator-outage") {
        raw.remove(i);
        let code = match faults::Options::from_args(&mut raw, binder, cgroup_root) {
            Ok(opts) => allocator_outage::run(opts),
            Err(e) => {
                eprintln!("vts: --allocator-outage: {e}");
                2
            }
        };
        println!("allocator outage: lane {lane}, exit {code}");
        std::process::exit(code);
    }
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
    let selinux = lane == "selinux";
    // A case this lane cannot run is listed as skipped, with the reason, never left out. The
    // selinux lane runs only the SELinux cases and the version check; the other lanes the rest.
    let not_here = "the selinux lane runs only the SELinux cases; the other lanes run this one";
    let bpf_absent = bpf_cases::absent();
    let memtrack_absent = memtrack_cases::absent(rpc.is_some());
    let vram_absent = memtrack_cases::vram_absent();
    let trace_absent = memtrack_cases::trace_absent();
    let groups: [(Cases, Option<&str>); 9] = [
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
        (
            VRAM_CASES,
            (lane != "dmem" || !std::path::Path::new("/dev/vramsim").exists())
                .then_some("needs the simulated VRAM device vts/kernel/vramsim (loaded in the dmem lane)"),
        ),
        (SELINUX_CASES, (!selinux).then_some("needs SELinux active with the lane's policy (the selinux lane)")),
        (BPF_CASES, bpf_absent.as_deref()),
        (MEMTRACK_CASES, memtrack_absent),
        (MEMTRACK_VRAM_CASES, memtrack_absent.or(vram_absent.as_deref())),
        (TRACE_CASES, memtrack_absent.or(trace_absent.as_deref())),
    ];
    // Over RPC the socket's root object is the one service under test.
    let instances = match &rpc {
        Some(_) => vec![INSTANCE.to_string()],
        None => declared_instances(binder.as_deref()).unwrap_or_else(|e| {
            eprintln!("vts: cannot list the declared instances: {e}");
            std::process::exit(2);
        }),
    };
    if instances.is_empty() {
        let reason = format!("no instance of {INSTANCE} is declared");
        let trials = groups
            .iter()
            .flat_map(|(group, _)| group.iter())
            .map(|(name, _)| {
                println!("skipped: {name}: {reason}");
                Trial::test(*name, || Ok(())).with_ignored_flag(true)
            })
            .collect();
        let skipped = libtest_mimic::run(&args, trials).num_ignored;
        println!("vts: 0 passed, 0 failed, {skipped} skipped (lane {lane}): {reason}");
        std::process::exit(SKIPPED);
    }
    let mut trials = Vec::new();
    for instance in &instances {
        let client = match &rpc {
            Some(socket) => Client::connect_rpc(socket),
            None => Client::connect_instance(binder.as_deref(), instance, INSTANCE_WAIT),
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vts: cannot reach {instance}: {e}");
                std::process::exit(2);
            }
        };
        let env = std::sync::Arc::new(Env {
            exe: std::env::current_exe().expect("own path"),
            cgroup: CgroupFs::new(cgroup_root.clone()),
            rpc: rpc.clone(),
            binder: binder.clone(),
            instance: instance.clone(),
            client,
            selinux,
        });
        // Names stay the case names for the usual single instance, so filters keep working.
        let suffix = if instances.len() > 1 { format!("/{instance}") } else { String::new() };
        for (group, unmet) in &groups {
            let selinux_group = std::ptr::eq(*group, SELINUX_CASES);
            for (name, case) in group.iter() {
                let env = std::sync::Arc::clone(&env);
                let case = *case;
                let elsewhere = selinux && !selinux_group && *name != "version_and_hash_are_served";
                let unmet = unmet.or(elsewhere.then_some(not_here));
                let name = format!("{name}{suffix}");
                if let Some(reason) = unmet {
                    println!("skipped: {name}: {reason}");
                }
                trials.push(
                    Trial::test(name, move || case(&env).map_err(Failed::from)).with_ignored_flag(unmet.is_some()),
                );
            }
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    println!(
        "vts: {} passed, {} failed, {} skipped (lane {lane}, instances: {})",
        conclusion.num_passed,
        conclusion.num_failed,
        conclusion.num_ignored,
        instances.join(" ")
    );
    conclusion.exit();
}
