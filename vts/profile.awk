# Buckets the service's CPU samples for BENCHMARKS.md (vts/benchmarks.sh). Input: `perf script
# -F comm,ip,sym,dso` of `perf record --call-graph dwarf -p <service>` (a header line per sample,
# then its frames, leaf first). Each sample is counted once: in the AIDL method it falls under
# (`<method>_user`: the service's own code; `<method>_kernel`: the system calls it makes), in
# the reply record rsbinder is writing after the method returned (`reply_<type>`), in binder's
# kernel path or rsbinder's own code outside any method (`binder_kernel`, `binder_user`: every
# call's transport, the null call's too), or on the service's background threads. Output:
# `result profile_<bucket>_samples N` lines and `result profile_samples TOTAL`.
function flush(   b) {
    if (!insample) return
    if (comm !~ /^(binder:|chargetransferd)/) b = "background"
    else if (method != "") b = method "_" (leafk ? "kernel" : "user")
    else if (reply != "") b = "reply_" reply
    else b = leafk ? "binder_kernel" : "binder_user"
    n[b]++
    total++
    insample = 0
}
/^[^ \t]/ { flush(); comm = $1; insample = 1; method = ""; reply = ""; leaf = 1; next }
/^[ \t]*$/ { flush(); next }
{
    if (leaf) { leafk = ($0 ~ /\[kernel\.kallsyms\]\)$/); leaf = 0 }
    if (method == "" && match($0, /ChargeTransferService as [^ ]*IChargeTransfer>::[A-Za-z]+ /)) {
        s = substr($0, RSTART, RLENGTH - 1); sub(/.*::/, "", s); method = s
    }
    if (reply == "" && match($0, /(UsageReport|ChargeInfo)::[A-Za-z]+ as rsbinder::parcelable::Serialize>::serialize/)) {
        s = substr($0, RSTART, RLENGTH); sub(/::.*/, "", s); reply = s
    }
}
END {
    flush()
    for (b in n) printf "result profile_%s_samples %d\n", b, n[b]
    printf "result profile_samples %d\n", total
}
