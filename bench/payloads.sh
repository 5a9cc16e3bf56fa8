# The bodies the bench backend serves (bench/nginx/backend.conf.tmpl), shared by
# bench/run.sh and bench/instructions.sh: 1 KiB text, a 20 KiB JSON, a 100 KiB JS asset.
# Sourced, not run.

make_payloads() {  # make_payloads DIR
    local www=$1
    mkdir -p "$www/assets"
    # 1 KiB text
    head -c 1024 /dev/zero | tr '\0' 'a' >"$www/small.txt"
    # ~20 KiB JSON (compressible, realistic-ish shape), exactly 20480 bytes
    awk 'BEGIN {
        s = "{\"code\":0,\"message\":\"success\",\"data\":[";
        for (i = 0; length(s) < 20300; i++)
            s = s sprintf("%s{\"id\":%d,\"name\":\"workflow-%05d\",\"status\":\"published\",\"updatedAt\":\"2026-11-22T13:04:%02dZ\"}", (i ? "," : ""), i, i, i % 60);
        s = s "],\"pad\":\"";
        while (length(s) < 20478) s = s "x";
        printf "%s\"}", s }' >"$www/json20k.json"
    # ~100 KiB JavaScript asset, exactly 102400 bytes
    awk 'BEGIN {
        s = "";
        for (i = 0; length(s) < 102300; i++)
            s = s sprintf("function f%d(a,b){return a*%d+b.map(function(x){return x+%d}).join(\",\")}\n", i, i, i);
        while (length(s) < 102399) s = s " ";
        printf "%s\n", s }' >"$www/assets/app.3f2a1b.js"
    chmod -R a+rX "$www"
}
