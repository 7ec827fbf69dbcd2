# Shared by the benchmark scripts' summaries, as `awk "$(<scripts/results.awk)" '...'`:
#   result()            reads a "RESULT key=value ..." line into v[key];
#   add(a, key, value)  appends value to the series `key` of a (a[key, 1..a[key]]);
#   median(a, key)      that series' median.
function result(   i, kv) { split("", v); for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
function add(a, key, value) { a[key]++; a[key, a[key]] = value }
function median(a, key,   k, i, j, t, b) {
    k = a[key]
    for (i = 1; i <= k; i++) b[i] = a[key, i]
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
    return b[int((k + 1) / 2)]
}
