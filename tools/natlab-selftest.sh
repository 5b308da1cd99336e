#!/usr/bin/env bash
# natlab-selftest.sh - check that every natlab kind really behaves as named.
#
# Brings up one lab per kind (plus a few two-sided / option labs), all in
# parallel with unique names, observes mapping, filtering and port allocation
# for UDP and TCP with natlab-probe.py, prints a table and exits non-zero on
# any mismatch.  Every lab is torn down, also on failure or Ctrl-C.
#
# With --delay: the RTT through the delay elements, UDP and TCP through
# them, the order of jittered frames, and that "down" leaves nothing.
#
# Usage: tools/natlab-selftest.sh            (as root; about 10 s)

set -euo pipefail
export PATH="${PATH}:/usr/sbin:/sbin"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly NATLAB="$HERE/natlab.sh" PROBE="$HERE/natlab-probe.py"

# What each kind must show.  Fields as printed by "natlab-probe.py LAB kind";
# allocation: preserve = public port == local port, seq+1 = consecutive new
# flows get consecutive ports, random = distinct non-sequential, hash = one
# port per remote IP.  unsolicited: what a packet to an unmapped port of the
# NAT gets (stack = a plain host: ICMP for UDP, RST for TCP); after_unsolicited:
# the port-preserving kinds must still preserve the port for a flow to the
# endpoint that had just sent the unsolicited packets.
declare -A EXPECT=(
	[none]="udp_map=none udp_alloc=preserve tcp_map=none tcp_alloc=preserve udp_filter=EIF tcp_filter=EIF unsolicited=stack after_unsolicited=preserve hairpin=-"
	[full-cone]="udp_map=EIM udp_alloc=preserve tcp_map=EIM tcp_alloc=preserve udp_filter=EIF tcp_filter=EIF unsolicited=drop after_unsolicited=preserve hairpin=no"
	[restricted-cone]="udp_map=EIM udp_alloc=preserve tcp_map=EIM tcp_alloc=preserve udp_filter=ADF tcp_filter=ADF unsolicited=drop after_unsolicited=preserve hairpin=no"
	[port-restricted-cone]="udp_map=EIM udp_alloc=preserve tcp_map=EIM tcp_alloc=preserve udp_filter=APDF tcp_filter=APDF unsolicited=drop after_unsolicited=preserve hairpin=no"
	[symmetric-random]="udp_map=APDM udp_alloc=random tcp_map=APDM tcp_alloc=random udp_filter=APDF tcp_filter=APDF unsolicited=drop hairpin=no"
	# miniupnpd on the router changes nothing of the NAT itself.
	[upnp-random]="udp_map=APDM udp_alloc=random tcp_map=APDM tcp_alloc=random udp_filter=APDF tcp_filter=APDF unsolicited=drop hairpin=no"
	[symmetric-sequential]="udp_map=APDM udp_alloc=seq+1 tcp_map=APDM tcp_alloc=seq+1 udp_filter=APDF tcp_filter=APDF unsolicited=drop hairpin=no"
	[address-dependent]="udp_map=ADM udp_alloc=hash tcp_map=ADM tcp_alloc=hash udp_filter=APDF tcp_filter=APDF unsolicited=drop hairpin=no"
	[port-restricted-rst]="udp_map=EIM udp_alloc=preserve tcp_map=EIM tcp_alloc=preserve udp_filter=APDF tcp_filter=APDF unsolicited=tcp-rst after_unsolicited=preserve hairpin=no"
	[port-restricted-icmp]="udp_map=EIM udp_alloc=preserve tcp_map=EIM tcp_alloc=preserve udp_filter=APDF tcp_filter=APDF unsolicited=icmp after_unsolicited=preserve hairpin=no"
	# Three random ports of a 512-port block repeat one another now and then
	# (about 1 in 170), which would read as ADM or "?": mapping and allocation
	# of this kind are judged by the block check below, over many flows.
	[cgn-block-random]="udp_filter=APDF tcp_filter=APDF unsolicited=drop hairpin=no"
	[cgn-eim-translated]="udp_map=EIM udp_alloc=fixed tcp_map=EIM tcp_alloc=fixed udp_filter=APDF tcp_filter=APDF unsolicited=drop hairpin=no"
	[cgn-block-sequential]="udp_map=APDM udp_alloc=seq+1 tcp_map=APDM tcp_alloc=seq+1 udp_filter=APDF tcp_filter=APDF unsolicited=drop hairpin=no"
)

# The cgn-* kinds (double NAT) once more with "natlab-probe.py LAB block":
# 30 UDP and 26 TCP flows, every public port inside the CGN's block; EIM
# kinds: one public port per local port whatever the destination, never the
# local port (translated); the hops: home NAT, the CGN's RFC 6598 inside
# address, the server.
readonly CGN_HOPS="hops=10.0.1.1,100.64.1.1,reached"
declare -A BLOCK_EXPECT=(
	[cgn-block-random]="udp_map=APDM udp_alloc=random udp_in_block=yes tcp_map=APDM tcp_alloc=random tcp_in_block=yes $CGN_HOPS"
	[cgn-eim-translated]="udp_map=EIM udp_alloc=translated udp_in_block=yes tcp_map=EIM tcp_alloc=translated tcp_in_block=yes $CGN_HOPS"
	[cgn-block-sequential]="udp_map=APDM udp_alloc=seq+1 udp_in_block=yes tcp_map=APDM tcp_alloc=seq+1 tcp_in_block=yes $CGN_HOPS"
)

# --hairpin, "natlab-probe.py LAB hairpin": host A's second socket reaches
# the first one's mapping through NAT A's public address, from its own
# mapping (EIM kinds, RFC 4787 REQ-9b) or another public port of the NAT
# (APDM kinds: a new mapping), and the answer finds its way back; a public
# port nobody holds stays silent.
readonly HP_EIM="udp_hairpin=yes udp_src=mapped udp_back=yes udp_unmapped=silent tcp_hairpin=yes tcp_src=mapped"
readonly HP_APDM="udp_hairpin=yes udp_src=nat-other udp_back=yes udp_unmapped=silent tcp_hairpin=yes tcp_src=nat-other"
declare -A HAIRPIN_EXPECT=(
	[full-cone]=$HP_EIM
	[restricted-cone]=$HP_EIM
	[port-restricted-cone]=$HP_EIM
	[port-restricted-rst]=$HP_EIM
	[symmetric-random]=$HP_APDM
	[symmetric-sequential]=$HP_APDM
	[address-dependent]=$HP_APDM
)

if [[ $(id -u) -ne 0 ]]; then
	echo "natlab-selftest: must run as root" >&2
	exit 1
fi
for tool in ip nft python3 timeout ethtool; do
	command -v "$tool" >/dev/null || { echo "natlab-selftest: '$tool' not found" >&2; exit 1; }
done

# Lab names: "s" + pid + index stays within natlab's 10-character limit and
# apart from the Rust harness's "t..." names.
readonly PREFIX="s$(($$ % 100000))x"
LABS=()
TMP=$(mktemp -d)
readonly TMP

cleanup() {
	local lab
	# Kill our probes first: they may sit inside a lab namespace.
	jobs -p | xargs -r kill 2>/dev/null || true
	wait 2>/dev/null || true
	for lab in "${LABS[@]}"; do
		"$NATLAB" down --name "$lab" >/dev/null 2>&1 || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# new_lab: sets LAB to a fresh name and records it for cleanup (not via $(),
# which would record it in a subshell).
new_lab() {
	LAB="$PREFIX${#LABS[@]}"
	LABS+=("$LAB")
}

# run_job ID LAB UP_ARGS... -- PROBE_ARGS...: up, probe, down, in the
# background; output in $TMP/ID.out, exit status in $TMP/ID.rc.
run_job() {
	local id=$1 lab=$2 up_args=() rc=0
	shift 2
	while [[ $1 != -- ]]; do up_args+=("$1"); shift; done
	shift
	(
		{
			"$NATLAB" up --name "$lab" "${up_args[@]}" &&
				timeout 30 "$PROBE" "$lab" "$@"
		} >"$TMP/$id.out" 2>"$TMP/$id.err" || rc=$?
		"$NATLAB" down --name "$lab" >/dev/null 2>>"$TMP/$id.err" || true
		echo "$rc" >"$TMP/$id.rc"
	) &
}

# The client and server of the --delay checks (run in the lab's namespaces
# with "natlab.sh exec").  serve ADDR PEER: UDP and TCP echo on ADDR:7, and
# counts out-of-order arrivals of numbered datagrams on ADDR:9 (reported to
# PEER:9 on request), for 20 s.  rtt ADDR: UDP RTTs (the first exchanges,
# which include ARP across the delay, not counted), then a TCP echo of
# 256 KiB.  order ADDR SELF: 300 numbered datagrams, then the report.
cat >"$TMP/delaycheck.py" <<'PY'
import select, socket, statistics, sys, time
mode, addr = sys.argv[1], sys.argv[2]
if mode == "serve":
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, 7))
    o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); o.bind((addr, 9))
    # Room for all 300 numbered datagrams while a loaded machine keeps this
    # loop from reading (the default buffer holds fewer; SO_RCVBUFFORCE = 33).
    try:
        o.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)
    except OSError:
        pass
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, 7)); l.listen()
    last = -1; inversions = received = 0
    end = time.monotonic() + 20
    while time.monotonic() < end:
        r, _, _ = select.select([u, o, l], [], [], 0.5)
        if u in r:
            d, a = u.recvfrom(2048); u.sendto(d, a)
        if o in r:
            d, a = o.recvfrom(64); n = int(d)
            if n < 0:  # a report request, answered with its tag
                o.sendto(b"%d %d %d" % (n, received, inversions), a)
                continue
            received += 1; inversions += n < last; last = n
        if l in r:
            c, _ = l.accept()
            with c:
                while True:
                    d = c.recv(65536)
                    if not d: break
                    c.sendall(d)
elif mode == "rtt":
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)
    rtts = []
    # The uncounted first exchanges are resent until answered: on a loaded
    # machine the server may not have bound its socket yet.
    for _ in range(10):
        u.sendto(b"w", (addr, 7))
        try:
            if u.recv(64) == b"w": break
        except TimeoutError:
            pass
    u.settimeout(3)
    for i in range(13):
        t = time.monotonic(); u.sendto(b"%d" % i, (addr, 7))
        while u.recv(64) != b"%d" % i: pass
        rtts.append((time.monotonic() - t) * 1000); time.sleep(0.02)
    rtts = rtts[3:]
    c = socket.create_connection((addr, 7), timeout=10)
    data = bytes(range(256)) * 1024; back = b""
    c.sendall(data); c.shutdown(socket.SHUT_WR)
    while True:
        d = c.recv(65536)
        if not d: break
        back += d
    print("rtt_min=%.1f rtt_median=%.1f udp=ok tcp=%s" % (
        min(rtts), statistics.median(rtts), "ok" if back == data else "fail(%d)" % len(back)))
elif mode == "order":
    o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); o.settimeout(1)
    # A report request answered first: the server has bound its socket (on a
    # loaded machine it may not have yet), so no numbered datagram is refused.
    for _ in range(10):
        o.sendto(b"-1", (addr, 9))
        try:
            o.recv(64); break
        except TimeoutError:
            pass
    o.settimeout(3)
    for i in range(300):
        o.sendto(b"%d" % i, (addr, 9)); time.sleep(0.001)
    time.sleep(0.5)
    # Tagged apart from the readiness requests, whose late answers may still be queued.
    o.sendto(b"-2", (addr, 9))
    while True:
        tag, got, inv = o.recv(64).split()
        if tag == b"-2":
            break
    print("received=%s inversions=%s" % (got.decode(), inv.decode()))
PY

# delay_job ID LAB DELAY CHECK: up with --delay DELAY (port-restricted-cone on
# side A), delaycheck.py CHECK from A to SRV1, down, then what is left of the
# lab: namespaces, pid files, delay processes.  Line in $TMP/ID.out.
delay_job() {
	local id=$1 lab=$2 delay=$3 check=$4
	(
		line="" rc=0 left=""
		{
			"$NATLAB" up --name "$lab" --delay "$delay" port-restricted-cone &&
				{ "$NATLAB" exec --name "$lab" srv -- python3 "$TMP/delaycheck.py" serve "$SRV1" & } &&
				sleep 0.5 &&
				line=$(timeout 30 "$NATLAB" exec --name "$lab" a -- \
					python3 "$TMP/delaycheck.py" "$check" "$SRV1")
		} 2>"$TMP/$id.err" || rc=$?
		# down kills the server (it runs in the lab).
		"$NATLAB" down --name "$lab" >/dev/null 2>>"$TMP/$id.err" || rc=1
		wait
		left+=$(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$lab-" | tr '\n' ' ' || true)
		left+=$(find /run/natlab -name "$lab-*" 2>/dev/null | tr '\n' ' ' || true)
		left+=$(pgrep -f "natlab-delay.py .*--netns $lab-" | tr '\n' ' ' || true)
		echo "$line left=${left:-none}" >"$TMP/$id.out"
		echo "$rc" >"$TMP/$id.rc"
	) &
}
readonly SRV1=203.0.113.1

# rate_job ID LAB: up with --rate 100 (port-restricted-cone on both sides),
# the shapers on each NAT's wan0 and lan0 (tc), info's RATE, down, then what
# is left of the lab.
rate_job() {
	local id=$1 lab=$2
	(
		line="" rc=0 left="" dev="" side=""
		{
			"$NATLAB" up --name "$lab" --rate 100 port-restricted-cone port-restricted-cone &&
				for side in a b; do
					for dev in wan0 lan0; do
						if tc -n "$lab-nat$side" qdisc show dev "$dev" | grep -q "tbf .*rate 100Mbit"; then
							line+="$side.$dev=tbf "
						else
							line+="$side.$dev=none "
						fi
					done
				done &&
				line+=$("$NATLAB" info --name "$lab" | grep '^RATE=')
		} 2>"$TMP/$id.err" || rc=$?
		"$NATLAB" down --name "$lab" >/dev/null 2>>"$TMP/$id.err" || rc=1
		left+=$(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$lab-" | tr '\n' ' ' || true)
		echo "$line left=${left:-none}" >"$TMP/$id.out"
		echo "$rc" >"$TMP/$id.rc"
	) &
}

# bg_job ID LAB RATE KIND: up with --background-flows-a RATE, whether the
# generator runs (pid file, process), "natlab-probe.py seqgap 4", down, then
# what is left of the lab: namespaces, pid files, generator processes.
bg_job() {
	local id=$1 lab=$2 rate=$3 kind=$4
	(
		line="" rc=0 left="" running=no pid=""
		{
			"$NATLAB" up --name "$lab" --background-flows-a "$rate" "$kind" &&
				pid=$(cat "/run/natlab/$lab-bga.pid") &&
				{ tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "natlab-bgflows.py .*--netns $lab-bga"; } &&
				running=yes &&
				line=$(timeout 30 "$PROBE" "$lab" seqgap 4)
		} 2>"$TMP/$id.err" || rc=$?
		"$NATLAB" down --name "$lab" >/dev/null 2>>"$TMP/$id.err" || rc=1
		left+=$(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$lab-" | tr '\n' ' ' || true)
		left+=$(find /run/natlab -name "$lab-*" 2>/dev/null | tr '\n' ' ' || true)
		left+=$(pgrep -f "natlab-bgflows.py .*--netns $lab-" | tr '\n' ' ' || true)
		echo "$line running=$running left=${left:-none}" >"$TMP/$id.out"
		echo "$rc" >"$TMP/$id.rc"
	) &
}

# portmap_job ID LAB PORTMAP: up upnp-random with --portmap PORTMAP, then
# Debian's own clients on host A against NAT A's miniupnpd: natpmpc maps UDP
# 40001 (and the dnat rule appears), upnpc maps UDP 40002, "upnpc -l" lists
# both, both are deleted and the chain is empty again; down, then what is
# left (namespaces, files).  Independent of punchraw.
portmap_job() {
	local id=$1 lab=$2 portmap=$3
	(
		rc=0 out="" left=""
		x() { "$NATLAB" exec --name "$lab" "$@"; }
		rules() { x nat-a -- nft list chain inet miniupnpd prerouting_miniupnpd | grep -c dnat || true; }
		{
			"$NATLAB" up --name "$lab" --portmap "$portmap" upnp-random &&
				{
					r=no
					x a -- timeout 10 natpmpc -g 10.0.1.1 -a 40001 40001 udp 60 2>&1 | grep -q "Mapped public port 40001 protocol UDP" && r=ok
					out+="natpmp_map=$r "
					r=no
					x a -- timeout 20 upnpc -a 10.0.1.2 40002 40002 UDP 2>&1 | grep -q "external 11.0.113.10:40002 UDP is redirected" && r=ok
					out+="upnp_map=$r rules=$(rules) "
					l=$(x a -- timeout 20 upnpc -l 2>&1 || true)
					r=no
					[[ $l == *"UDP 40001->10.0.1.2:40001"* && $l == *"UDP 40002->10.0.1.2:40002"* ]] && r=ok
					out+="upnp_list=$r "
					x a -- timeout 10 natpmpc -g 10.0.1.1 -a 40001 0 udp 0 >/dev/null 2>&1 || true
					x a -- timeout 20 upnpc -d 40002 UDP >/dev/null 2>&1 || true
					out+="after_delete=$(rules)"
				}
		} 2>"$TMP/$id.err" || rc=$?
		"$NATLAB" down --name "$lab" >/dev/null 2>>"$TMP/$id.err" || rc=1
		left+=$(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$lab-" | tr '\n' ' ' || true)
		left+=$(find /run/natlab -name "$lab-*" 2>/dev/null | tr '\n' ' ' || true)
		echo "$out left=${left:-none}" >"$TMP/$id.out"
		echo "$rc" >"$TMP/$id.rc"
	) &
}

start=$SECONDS
mapfile -t KIND_LIST < <("$NATLAB" kinds | awk '{print $1}')

for kind in "${KIND_LIST[@]}"; do
	new_lab
	run_job "kind-$kind" "$LAB" "$kind" -- kind
done
for kind in "${!BLOCK_EXPECT[@]}"; do
	new_lab
	run_job "block-$kind" "$LAB" "$kind" -- block
done

for kind in "${!HAIRPIN_EXPECT[@]}"; do
	new_lab
	run_job "hairpin-$kind" "$LAB" --hairpin "$kind" -- hairpin
done
# Hairpinning changes nothing else of the kind.
new_lab
run_job hairpin-kind "$LAB" --hairpin port-restricted-cone -- kind
# Another host of the LAN (the background flows' namespace) hairpins too, from
# its own mapping, which here is not its local port (REQ-9b).
new_lab
run_job hairpin-lan "$LAB" --hairpin --background-flows-a 5 port-restricted-cone -- hairpin
# Background flows move a sequential NAT's counter between a host's own
# flows; without them each new flow gets the next port.
new_lab
run_job seqgap-quiet "$LAB" symmetric-sequential -- seqgap 4

# Per-netns sysctls: the root namespace's value must not move.
root_udp_timeout=$(sysctl -n net.netfilter.nf_conntrack_udp_timeout)
new_lab
run_job timeout "$LAB" --udp-timeout 2 port-restricted-cone full-cone -- timeout 2
new_lab
run_job loss "$LAB" --loss 30 port-restricted-cone -- loss
new_lab
run_job punch "$LAB" port-restricted-cone port-restricted-cone -- punch
new_lab
run_job punch-rst "$LAB" port-restricted-cone port-restricted-rst -- punch
new_lab
run_job direct "$LAB" none none -- direct
new_lab
run_job hops "$LAB" --router-b port-restricted-cone port-restricted-rst -- hops
# --delay: classification unchanged, RTT, UDP and TCP, order, clean down.
new_lab
run_job delay-kind "$LAB" --delay 40 port-restricted-cone -- kind
# The options in front of a CGN: delay, router and timeout as before, loss
# applied once per path (by the CGN, not again by the home NAT).
new_lab
run_job cgn-delay "$LAB" --delay 40 cgn-eim-translated -- kind
new_lab
run_job cgn-hops "$LAB" --router-b port-restricted-cone cgn-block-sequential -- hops
new_lab
run_job cgn-timeout "$LAB" --udp-timeout 2 cgn-eim-translated cgn-block-random -- timeout 2
new_lab
run_job cgn-loss "$LAB" --loss 30 cgn-block-random -- loss
new_lab
bg_job seqgap-busy "$LAB" 200 symmetric-sequential
new_lab
portmap_job portmap-all "$LAB" upnp,natpmp,pcp
new_lab
portmap_job portmap-upnp "$LAB" upnp
new_lab
delay_job delay "$LAB" 40 rtt
new_lab
rate_job rate "$LAB"
new_lab
delay_job delay-jitter "$LAB" 20/15 order

# Command-line behaviour, checked while the jobs run.
CLI_FAIL=()
new_lab
cli_lab=$LAB
"$NATLAB" up --name "$cli_lab" none >/dev/null 2>&1 || CLI_FAIL+=("up failed")
if [[ $(ip netns exec "$cli_lab-nata" sysctl -n net.netfilter.nf_conntrack_udp_timeout) != "$root_udp_timeout" ]]; then
	CLI_FAIL+=("default udp timeout changed")
fi
rc=0
"$NATLAB" up --name "$cli_lab" none >/dev/null 2>&1 || rc=$?
((rc == 3)) || CLI_FAIL+=("up on an existing lab: exit $rc, want 3")
"$NATLAB" down --name "$cli_lab" || CLI_FAIL+=("down failed")
"$NATLAB" down --name "$cli_lab" || CLI_FAIL+=("second down not idempotent")
if "$NATLAB" up --name "Bad-Name" none >/dev/null 2>&1; then CLI_FAIL+=("bad lab name accepted"); fi
if "$NATLAB" up --name "$cli_lab" --loss 101 none >/dev/null 2>&1; then CLI_FAIL+=("--loss 101 accepted"); fi
if "$NATLAB" up --name "$cli_lab" --delay 10/11 none >/dev/null 2>&1; then CLI_FAIL+=("--delay 10/11 accepted"); fi
if "$NATLAB" up --name "$cli_lab" --reorder none >/dev/null 2>&1; then CLI_FAIL+=("--reorder without --delay accepted"); fi
for args in "--hairpin none" "--hairpin cgn-block-sequential" "--hairpin b full-cone" \
	"--background-flows 0 full-cone" "--background-flows 1001 full-cone" "--background-flows-b 5 full-cone" \
	"--delay-a 5/6 none" "--delay-b x full-cone full-cone" "--rate 0 none" "--rate 100001 none" \
	"--rate x full-cone"; do
	rc=0
	# shellcheck disable=SC2086  # the arguments are words
	"$NATLAB" up --name "$cli_lab" $args >/dev/null 2>&1 || rc=$?
	((rc == 2)) || CLI_FAIL+=("up $args: exit $rc, want 2 (usage)")
done
# A failure half way (here: nft refuses the ruleset) must leave nothing.
mkdir "$TMP/fakebin"
printf '#!/bin/sh\nexit 1\n' >"$TMP/fakebin/nft"
chmod +x "$TMP/fakebin/nft"
if PATH="$TMP/fakebin:$PATH" "$NATLAB" up --name "$cli_lab" full-cone >/dev/null 2>&1; then
	CLI_FAIL+=("up with a failing nft succeeded")
fi
if [[ -n $("$NATLAB" list | grep -x "$cli_lab" || true) ]]; then
	CLI_FAIL+=("failed up left namespaces behind")
fi
# A failure after side A's background flows started (side B's generator does
# not start) must stop A's generator too.
printf '#!/bin/sh\ncase "$*" in *natlab-bgflows.py*-bgb*) exit 1 ;; esac\nexec %s "$@"\n' \
	"$(command -v python3)" >"$TMP/fakebin/python3"
chmod +x "$TMP/fakebin/python3"
rm "$TMP/fakebin/nft"
if PATH="$TMP/fakebin:$PATH" "$NATLAB" up --name "$cli_lab" --background-flows 50 full-cone full-cone >/dev/null 2>&1; then
	CLI_FAIL+=("up with a failing generator on side B succeeded")
fi
if [[ -n $("$NATLAB" list | grep -x "$cli_lab" || true) ]]; then
	CLI_FAIL+=("up with a failing generator left namespaces behind")
fi
if pgrep -f "natlab-bgflows.py .*--netns $cli_lab-" >/dev/null || [[ -n $(find /run/natlab -name "$cli_lab-*" 2>/dev/null) ]]; then
	CLI_FAIL+=("up with a failing generator left the generator of side A or its files behind")
fi

wait

# ---- report --------------------------------------------------------------

pass=0 fail=0
field() { # field KEY LINE
	local kv
	for kv in $2; do
		if [[ $kv == "$1="* ]]; then echo "${kv#*=}"; return; fi
	done
	echo "?"
}
job_line() { # the probe's output line, or "error: ..." with its stderr
	local id=$1
	if [[ $(cat "$TMP/$id.rc" 2>/dev/null) == 0 ]]; then
		tail -n 1 "$TMP/$id.out"
	else
		echo "error: $(tail -n 3 "$TMP/$id.err" "$TMP/$id.out" 2>/dev/null | tr '\n' ' ')"
	fi
}
verdict() { # verdict OK? LABEL DETAILS
	if [[ $1 == ok ]]; then
		pass=$((pass + 1))
		printf '  ok    %s\n' "$2"
	else
		fail=$((fail + 1))
		printf '  FAIL  %s\n        %s\n' "$2" "$3"
	fi
}

printf '%-22s %-11s %-17s %-11s %-11s %-7s %s\n' \
	KIND "MAP udp/tcp" "ALLOC udp/tcp" "FILT udp/tcp" UNSOLICITED HAIRPIN RESULT
for kind in "${KIND_LIST[@]}"; do
	line=$(job_line "kind-$kind")
	ok=ok
	for kv in ${EXPECT[$kind]:-missing=expectation}; do
		if [[ $(field "${kv%%=*}" "$line") != "${kv#*=}" ]]; then ok=MISMATCH; fi
	done
	printf '%-22s %-11s %-17s %-11s %-11s %-7s %s\n' "$kind" \
		"$(field udp_map "$line")/$(field tcp_map "$line")" \
		"$(field udp_alloc "$line")/$(field tcp_alloc "$line")" \
		"$(field udp_filter "$line")/$(field tcp_filter "$line")" \
		"$(field unsolicited "$line")" "$(field hairpin "$line")" "$ok"
	if [[ $ok == ok ]]; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1))
		echo "    observed: $line"
		echo "    expected: ${EXPECT[$kind]:-}"
	fi
done

echo
echo "Double NAT (cgn-*), many flows:"
for kind in "${!BLOCK_EXPECT[@]}"; do
	line=$(job_line "block-$kind")
	r=ok
	for kv in ${BLOCK_EXPECT[$kind]}; do
		if [[ $(field "${kv%%=*}" "$line") != "${kv#*=}" ]]; then r=no; fi
	done
	verdict "$r" "$kind: ${BLOCK_EXPECT[$kind]}" "$line"
done

echo
echo "Hairpinning (--hairpin):"
for kind in "${!HAIRPIN_EXPECT[@]}"; do
	line=$(job_line "hairpin-$kind")
	r=ok
	for kv in ${HAIRPIN_EXPECT[$kind]}; do
		if [[ $(field "${kv%%=*}" "$line") != "${kv#*=}" ]]; then r=no; fi
	done
	verdict "$r" "$kind: ${HAIRPIN_EXPECT[$kind]}" "$line"
done
line=$(job_line hairpin-kind)
r=ok
for kv in ${EXPECT[port-restricted-cone]/hairpin=no/hairpin=yes}; do
	if [[ $(field "${kv%%=*}" "$line") != "${kv#*=}" ]]; then r=no; fi
done
verdict "$r" "--hairpin port-restricted-cone classifies as without, but hairpin=yes" "$line"
line=$(job_line hairpin-lan)
r=ok
for kv in $HP_EIM lan_hairpin=yes lan_src=mapped lan_translated=yes; do
	if [[ $(field "${kv%%=*}" "$line") != "${kv#*=}" ]]; then r=no; fi
done
verdict "$r" "another LAN host hairpins from its own (translated) mapping: $line" "$line"

echo
echo "Background flows (--background-flows):"
line=$(job_line seqgap-quiet)
[[ $(field gaps "$line") == "1,1,1,1" ]] && r=ok || r=no
verdict "$r" "symmetric-sequential alone: consecutive flows 0.2 s apart get consecutive ports: $line" "$line"
line=$(job_line seqgap-busy)
r=ok
gaps=$(field gaps "$line")
[[ $gaps =~ ^[0-9]+(,[0-9]+){3}$ ]] || r=no
for g in ${gaps//,/ }; do
	[[ $g =~ ^[0-9]+$ ]] && ((g > 1)) || r=no
done
[[ $line == *" running=yes left=none" ]] || r=no
verdict "$r" "symmetric-sequential + 200 flows/s: every gap larger than the step, down leaves nothing: $line" "$line"

echo
echo "Other checks:"
line=$(job_line timeout)
[[ $line == "a_alive=yes a_after_idle=no b_alive=yes b_after_idle=no" ]] && r=ok || r=no
verdict "$r" "--udp-timeout 2: binding alive at 1 s, gone after 3.5 s idle (port-restricted-cone, full-cone)" "$line"
[[ $(sysctl -n net.netfilter.nf_conntrack_udp_timeout) == "$root_udp_timeout" ]] && r=ok || r=no
verdict "$r" "nf_conntrack_udp_timeout is per-netns (root still $root_udp_timeout)" "root value changed"
line=$(job_line loss)
up=$(field up_passed "$line") down=$(field down_passed "$line")
[[ $up =~ ^[0-9]+$ && $down =~ ^[0-9]+$ ]] && ((up >= 230 && up <= 330 && down >= 230 && down <= 330)) && r=ok || r=no
verdict "$r" "--loss 30: $line (want 230..330 of 400 each way)" "$line"
line=$(job_line rate)
[[ $line == "a.wan0=tbf a.lan0=tbf b.wan0=tbf b.lan0=tbf RATE=100 left=none" ]] && r=ok || r=no
verdict "$r" "--rate 100: a 100 Mbit/s token bucket each way on both NATs, in info, gone after down: $line" "$line"
line=$(job_line hops)
[[ $line == "ttl1=10.0.1.1 ttl2=203.0.113.21 ttl3=silent" ]] && r=ok || r=no
verdict "$r" "--router-b: TTL 1 dies at NAT A, TTL 2 at the router, NAT B silent: $line" "$line"
line=$(job_line punch)
[[ $line == "udp_punch=ok tcp_simultaneous_open=ok" ]] && r=ok || r=no
verdict "$r" "port-restricted-cone x2: $line" "$line"
line=$(job_line punch-rst)
[[ $line == "udp_punch=ok tcp_simultaneous_open=fail"* ]] && r=ok || r=no
verdict "$r" "port-restricted-cone x port-restricted-rst: $line (RST kills TCP punch)" "$line"
line=$(job_line direct)
[[ $line == "direct=ok" ]] && r=ok || r=no
verdict "$r" "none x none: A reaches B's public address directly" "$line"
line=$(job_line delay-kind)
r=ok
for kv in ${EXPECT[port-restricted-cone]}; do
	if [[ $(field "${kv%%=*}" "$line") != "${kv#*=}" ]]; then r=no; fi
done
verdict "$r" "--delay 40: port-restricted-cone classifies as without delay" "$line"
line=$(job_line delay)
rtt_min=$(field rtt_min "$line") rtt_median=$(field rtt_median "$line")
# Never early: the element holds every frame its full time, both ways.  The
# upper bound is a generous margin for a loaded machine, not a speed target.
if [[ $line == *"udp=ok tcp=ok left=none" ]] &&
	awk -v lo="$rtt_min" -v med="$rtt_median" 'BEGIN { exit !(lo >= 80 && med < 80 + 80) }'; then
	r=ok
else
	r=no
fi
verdict "$r" "--delay 40: UDP RTT A->srv >= 80 ms (min $rtt_min, median $rtt_median), UDP and TCP pass, down leaves nothing" "$line"
line=$(job_line delay-jitter)
[[ $line == "received=300 inversions=0 left=none" ]] && r=ok || r=no
verdict "$r" "--delay 20/15: 300 jittered datagrams arrive in order, down leaves nothing" "$line"
line=$(job_line cgn-delay)
r=ok
for kv in ${EXPECT[cgn-eim-translated]}; do
	if [[ $(field "${kv%%=*}" "$line") != "${kv#*=}" ]]; then r=no; fi
done
verdict "$r" "--delay 40: cgn-eim-translated classifies as without delay" "$line"
line=$(job_line cgn-hops)
[[ $line == "ttl1=10.0.1.1 ttl2=203.0.113.21 ttl3=silent" ]] && r=ok || r=no
verdict "$r" "--router-b in front of a CGN: TTL 2 dies at the router, the CGN is silent: $line" "$line"
line=$(job_line cgn-timeout)
[[ $line == "a_alive=yes a_after_idle=no b_alive=yes b_after_idle=no" ]] && r=ok || r=no
verdict "$r" "--udp-timeout 2 through double NATs (cgn-eim-translated, cgn-block-random)" "$line"
line=$(job_line cgn-loss)
up=$(field up_passed "$line") down=$(field down_passed "$line")
[[ $up =~ ^[0-9]+$ && $down =~ ^[0-9]+$ ]] && ((up >= 230 && up <= 330 && down >= 230 && down <= 330)) && r=ok || r=no
verdict "$r" "--loss 30 through a double NAT, lost once: $line (want 230..330 of 400 each way)" "$line"
line=$(job_line portmap-all)
[[ $line == "natpmp_map=ok upnp_map=ok rules=2 upnp_list=ok after_delete=0 left=none" ]] && r=ok || r=no
verdict "$r" "upnp-random: natpmpc and upnpc map on miniupnpd, upnpc -l lists both, both deleted, down leaves nothing: $line" "$line"
line=$(job_line portmap-upnp)
[[ $line == "natpmp_map=no upnp_map=ok rules=1 upnp_list=no after_delete=0 left=none" ]] && r=ok || r=no
verdict "$r" "upnp-random --portmap upnp: NAT-PMP unanswered, UPnP maps: $line" "$line"
if ((${#CLI_FAIL[@]} == 0)); then r=ok; else r=no; fi
verdict "$r" "CLI: existing name (exit 3), idempotent down, name/option validation, cleanup of a failed up" \
	"${CLI_FAIL[*]:-}"

echo
echo "natlab-selftest: $pass passed, $fail failed ($((SECONDS - start)) s)"
((fail == 0))
