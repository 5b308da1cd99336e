#!/usr/bin/env bash
# natlab.sh - a NAT lab built from network namespaces, for punchraw's tests.
#
# Everything lives in namespaces named "${LAB}-*"; nothing is left in the root
# namespace (veth pairs are created directly inside the lab's namespaces), so
# several labs with different names can run side by side (tests run in
# parallel).  Traffic never leaves the namespaces.
#
# Topology (fixed addresses):
#
#   ${LAB}-srv    eth0 203.0.113.1/24 + 203.0.113.2/24  (server with two addresses)
#        |
#   ${LAB}-wan    br0: the "internet", one L2 segment 203.0.113.0/24
#        |                                   |
#   ${LAB}-nata   wan0 203.0.113.10/24        ${LAB}-natb   wan0 203.0.113.20/24
#                 lan0 10.0.1.1/24                          lan0 10.0.2.1/24
#        |                                   |
#   ${LAB}-a      eth0 10.0.1.2/24            ${LAB}-b      eth0 10.0.2.2/24
#                 default via 10.0.1.1                      default via 10.0.2.1
#
# With --router-b a plain router ${LAB}-rtb stands between NAT B and the bridge
# (up0 on the bridge, down0 to NAT B's wan0, both 203.0.113.21, proxy ARP on
# both so no address changes): one more hop between the NATs, as on the
# Internet, which low-TTL priming needs (a SYN that opens our NAT but dies
# before the peer's).  Not with kind "none" on side B.
#
# With --delay MS[/JITTER] a delay element stands on each NAT's uplink: a
# namespace ${LAB}-dla (${LAB}-dlb) between the NAT's wan0 and the bridge (or
# NAT B's router), with veth ends up0 (bridge side) and dn0 (NAT side) that
# tools/natlab-delay.py bridges in userspace, holding every frame MS ms (+-
# a uniform JITTER, without reordering unless --reorder) in each direction:
# the RTT from a host to the server grows by 2*MS.  It is transparent at
# layer 2 (no addresses); TX checksum offload is off on every interface that
# sends into the WAN segment (see tools/natlab-delay.py).  Its pid file and
# log are /run/natlab/${LAB}-dl{a,b}.{pid,log}; "down" stops it by that pid.
# Without --delay there is no element and nothing of the above.
#
# The cgn-* kinds are a double NAT (RFC 6598): host A sits behind a home NAT
# (kind port-restricted-cone, in ${LAB}-nata as usual), whose WAN is in the
# shared address space 100.64.0.0/10, behind a carrier-grade NAT ${LAB}-cgna
# that holds the public address:
#
#   ${LAB}-cgna   wan0 203.0.113.10/24 (NAT_A, on the bridge as before)
#                 lan0 100.64.1.1/24          (side B: 203.0.113.20, 100.64.2.1)
#        |
#   ${LAB}-nata   wan0 100.64.1.2/24, default via 100.64.1.1   (side B: 100.64.2.2)
#                 lan0 10.0.1.1/24
#        |
#   ${LAB}-a      eth0 10.0.1.2/24
#
# The CGN confines its subscriber to a block of 512 ports (the per-subscriber
# port sets of RFC 6888 section 5 / RFC 7422): side A 12288-12799, side B
# 12800-13311, both below Linux's ephemeral range (32768-60999) so that a
# host's ephemeral source port is never by chance one of the block (which
# cgn-eim-translated would then keep).  --delay and --router-b stand in front
# of the CGN, --loss is applied by the CGN only (so a path loses as much as
# through a single NAT), --udp-timeout applies to both NATs.  "info" adds
# CGN_A (the CGN's inside address), HOME_A (the home NAT's WAN address) and
# BLOCK_A=LO-HI.  Exec nodes: cgn-a, cgn-b.
#
# With --default-route the NAT holding each side's public address (the CGN of
# a cgn-* kind) gets a default route via SRV1, as a NAT has toward its ISP: a
# packet to an address the lab does not route (a peer's private 10.x address,
# say) then leaves through the NAT -- taking a mapping, and a step of a
# sequential NAT's counter -- and is dropped silently by srv, which does not
# forward.  Without it the NATs have no default route and drop such a packet
# before translation.
#
# Kind "none" (plain router, no NAT, no firewall) numbers that side's LAN with
# public addresses instead: side A 198.51.100.1/26 (router) + host
# 198.51.100.2, side B 198.51.100.65/26 + host 198.51.100.66; srv and the
# other side's NAT get a route to it via the router's WAN address.
#
# Every NAT keeps all of its rules in one nftables table "ip natlab" inside its
# own namespace, so deleting the namespace deletes the rules.  IPv6 is
# disabled in the lab unless --ipv6: it keeps DAD delays and RS/MLD/ND
# chatter out of packet captures.
#
# With --ipv6 the lab is dual stack: IPv6 beside IPv4, routed, never
# translated (no NAT66), as most home and mobile IPv6 is:
#
#   ${LAB}-srv    eth0 2001:db8::1/64 + 2001:db8::2/64 (SRV1_V6, SRV2_V6)
#   ${LAB}-nata   wan0 2001:db8::10/64 (NAT_A_V6; side B ::20)
#                 lan0 2001:db8:1::1/64 (side B 2001:db8:2::1/64)
#   ${LAB}-a      eth0 2001:db8:1::2/64 (A_V6; B_V6 2001:db8:2::2)
#
# srv and the other side route each LAN /64 via its router's WAN address.
# Every NAT kind but none is then also a stateful IPv6 firewall, the usual
# CPE: table "ip6 natlab6", forward policy drop but established/related in
# and LAN->WAN out, which is address-and-port-dependent filtering with
# endpoint-independent, port-preserving "mapping" (the host's own address
# and port).  ICMPv6 neighbour discovery is accepted, or IPv6 on the link
# dies.  Kind none routes IPv6 unfiltered.  The cgn-* kinds: the CGN
# routes IPv6 (an ISP router, its inside link 2001:db8:c1::/64, side B
# c2), the home NAT is the firewall.  Addresses are added with "nodad" and
# DAD is off, so they are usable at once; router solicitations, SLAAC and
# RA are off.  Not with --router-b (its proxy ARP has no IPv6 twin here).
#
# --nat66 (implies --ipv6) translates IPv6 too, as some routers do: every
# side with a NAT kind numbers its LAN from the ULA prefix fd00:1::/64 (side
# B fd00:2::/64; host ::2, router ::1), which nobody routes, and the NAT
# masquerades it to its WAN address (NAT_A_V6): endpoint-independent and
# port preserving, "fully-random" (a random port per flow) for the *-random
# kinds, filtering by conntrack as before.  Not with the cgn-* kinds.
#
# Names: every lab writes /etc/netns/${LAB}-a/hosts (and -b), which "ip
# netns exec" mounts over /etc/hosts: SRV_NAME (srv.lab) resolves there to
# SRV1 and, with --ipv6, to SRV1_V6 too (both an A and an AAAA address,
# without DNS).  "down" (and a failed "up") removes them.
#
# Hairpinning only with --hairpin: without it, packets from a LAN to its NAT's
# own WAN address are dropped by the NAT, not looped back.  --hairpin (both
# sides present) or --hairpin a|b|both makes that NAT loop a packet from its
# LAN to its own WAN address and a public port back onto the internal
# endpoint holding that port, with the source translated to the sender's
# mapping (RFC 4787 section 6, REQ-9), whatever the kind's filtering.  Every
# NAT kind but none and the cgn-* kinds (whose public address belongs to the
# CGN, a second NAT away).  See ruleset().
#
# With --background-flows RATE (both sides present) or --background-flows-a
# RATE / --background-flows-b RATE, other subscribers stand behind that NAT:
# a namespace ${LAB}-bga (${LAB}-bgb) on the host's LAN with the host's
# address + 1 (10.0.1.3, 10.0.2.3; kind none: 198.51.100.3, .67; the cgn-*
# kinds: behind the home NAT, so the flows pass the CGN too), where
# tools/natlab-bgflows.py opens RATE new UDP flows per second (1-1000), each
# one datagram from a new source port, to the discard address SRV_BG
# 203.0.113.3 on ${LAB}-srv (dropped there by nftables, so no ICMP comes
# back).  Every flow makes the NAT (and a CGN behind it) allocate a new
# mapping: a sequential NAT's counter moves between a host's own flows.  The
# NAT's lan0 is then a bridge with ports lanh (to the host) and lanbg (to the
# other subscribers); without the option it is the plain veth as before.  Its
# pid file and log are /run/natlab/${LAB}-bg{a,b}.{pid,log}; "down" (and a
# failed "up") stops it by that pid.  The flows never clash with a host's own
# mappings: no host talks to SRV_BG.  With a sequential kind the counter wraps
# after its 10000 (512) ports: at RATE 40 a host's mapping may see its port
# handed out again to another flow after 250 s (12.8 s in a CGN block).
#
# How the kinds are made (details at ruleset() below):
#   none                  plain router, forward policy accept
#   full-cone             masquerade + DNAT from a map {proto . public port}
#   restricted-cone       masquerade + DNAT from a map {remote ip . proto . public port}
#   port-restricted-cone  masquerade; unsolicited inbound dropped
#   symmetric-random      masquerade fully-random; unsolicited inbound dropped
#   symmetric-sequential  snat to WAN : numgen inc mod 10000 map {i : 20000+i}
#   address-dependent     snat to WAN : jhash(int ip . int port . remote ip)
#                         mod 4096 map {i : 30000+i}
#   port-restricted-rst   as port-restricted-cone, inbound SYN -> "reject with tcp reset"
#   port-restricted-icmp  as port-restricted-cone, inbound -> ICMP port-unreachable
# The cgn-* kinds: the home NAT is port-restricted-cone, the CGN does
#   cgn-block-random      snat to WAN : LO-HI random (a random port of the
#                         block per new 5-tuple: APDM)
#   cgn-eim-translated    snat to WAN : LO-HI (a source port outside the range
#                         gets a port of it, and the kernel reuses that
#                         mapping for every destination: EIM, not preserving)
#   cgn-block-sequential  snat to WAN : numgen inc mod 512 map {i : LO+i}
# and filters like port-restricted-cone (conntrack only: APDF).
# All NAT kinds: TCP and UDP alike, forward policy drop except established/
# related, LAN->WAN and (cone kinds) DNAT'd flows.  Cone kinds accept inbound
# from new endpoints until the map entry times out: nf_conntrack_udp_timeout_stream
# (120 s) or --udp-timeout after the last outbound packet of that mapping (also
# for TCP).  Conntrack itself keeps unreplied UDP 30 s, so use --udp-timeout
# (it sets both) when measuring binding lifetimes.
#
# Kind upnp-random is symmetric-random whose NAT also runs Debian's miniupnpd
# (miniupnpd-nftables), the port-mapping service of many home routers: UPnP IGD
# (SSDP on the LAN, SOAP on TCP 5000), NAT-PMP and PCP (UDP 5351).  miniupnpd
# refuses a WAN address in a reserved range (private, 100.64/10 and the
# documentation ranges this lab's WAN uses): "Port forwarding is impossible".
# So that NAT's wan0 alone is numbered from PM_WAN_NET (11.0.113.0/24, not
# reserved; nothing leaves the machine), on the same bridge: it reaches
# 203.0.113.0/24 on-link, and srv and the other NAT reach it on-link too.
# --portmap LIST (comma-separated of upnp, natpmp, pcp; or none; default all
# three) picks what it serves: upnp is miniupnpd's enable_upnp; enable_natpmp
# serves NAT-PMP and PCP together, so natpmp without pcp (or the reverse)
# drops the other's requests (the first payload byte: version 0 NAT-PMP,
# version 2 PCP) in the NAT's input chain, and the client hears nothing; with
# neither, 5351 is closed (ICMP port unreachable).  With wandown in the list
# miniupnpd's ext_ifname names an interface that does not exist, a router whose
# WAN is down: it runs and answers every request with an error (NAT-PMP result
# 3 network failure, PCP NETWORK_FAILURE, UPnP an empty external address).
# Mappings are dnat rules in chain prerouting_miniupnpd of the NAT's table
# "inet miniupnpd" (list them with "exec nat-a -- nft list chain inet
# miniupnpd prerouting_miniupnpd" or "exec a -- upnpc -l").  Only external
# ports 1024-65535 may be mapped (a router refusing low ports).  Its config,
# pid file and log are /run/natlab/LAB-natX-upnpd.{conf,pid,log}; "down"
# stops it with the namespace.  Not with --router-b on side B.
#
# Node names (for "exec"): srv, a, b, nat-a, nat-b (and wan, the bridge;
# bg-a, bg-b with background flows).

set -euo pipefail

# Debian keeps ip/nft in sbin, which a non-login PATH may lack.
export PATH="${PATH}:/usr/sbin:/sbin"

readonly PROG="${0##*/}"
readonly DEFAULT_LAB=prlab

readonly SRV1=203.0.113.1 SRV2=203.0.113.2 WAN_PREFIX=24
# The discard address of the background flows (only with them).
readonly SRV_BG=203.0.113.3
readonly NAT_A_WAN=203.0.113.10 NAT_B_WAN=203.0.113.20
# The WAN of the upnp-* kinds (see the header): not a reserved range.
readonly PM_WAN_NET=11.0.113.0/24 PM_A_WAN=11.0.113.10 PM_B_WAN=11.0.113.20
readonly WAN_NET=203.0.113.0/24
# --ipv6 (see the header): documentation prefixes, routed, never translated.
readonly SRV1_V6=2001:db8::1 SRV2_V6=2001:db8::2 WAN6_PREFIX=64
readonly NAT_A_V6=2001:db8::10 NAT_B_V6=2001:db8::20
# The server's name in the host namespaces' /etc/hosts.
readonly SRV_NAME=srv.lab
# What the upnp-* kinds' router serves when --portmap is not given.
readonly PORTMAP_ALL=upnp,natpmp,pcp

# Ports handed out by the kinds that do not preserve ports.
# A real sequential NAT counts over most of the port space and wraps rarely; a
# 1000-port pool wrapped every 3 s under 300 flows/s, which no search range
# built from the measured drift can follow (the peer cannot know the pool's end).
readonly SEQ_BASE=20000 SEQ_COUNT=10000  # symmetric-sequential: 20000..29999
readonly HASH_BASE=30000 HASH_COUNT=4096 # address-dependent:   30000..34095
readonly BLOCK_BASE=12288 BLOCK_SIZE=512  # cgn-*: side A's block; side B's follows it
# The kind of the home NAT behind the CGN of the cgn-* kinds.
readonly CGN_HOME_KIND=port-restricted-cone

# kind name, then its one-line description (printed by "kinds").
readonly KINDS=(
	none "no NAT, no firewall: plain router, hosts use public addresses"
	full-cone "EIM, port preserving, endpoint-independent filtering (EIF)"
	restricted-cone "EIM, port preserving, address-dependent filtering (ADF)"
	port-restricted-cone "EIM, port preserving, address-and-port-dependent filtering (APDF)"
	symmetric-random "APDM with a random port per new flow, APDF"
	symmetric-sequential "APDM with sequential ports (step 1, ${SEQ_BASE}..$((SEQ_BASE + SEQ_COUNT - 1))), APDF"
	address-dependent "address-dependent mapping (hashed port per remote IP), APDF"
	port-restricted-rst "like port-restricted-cone, but unsolicited inbound TCP SYNs get a TCP RST from the NAT"
	port-restricted-icmp "like port-restricted-cone, but unsolicited inbound gets ICMP port-unreachable"
	cgn-block-random "double NAT: port-restricted-cone behind a CGN (100.64.0.0/10 between) with APDM, a random port per new flow inside a 512-port block, APDF"
	cgn-eim-translated "double NAT: port-restricted-cone behind a CGN with EIM whose ports are translated (not preserved) into a 512-port block, APDF"
	cgn-block-sequential "double NAT: port-restricted-cone behind a CGN with APDM, sequential ports (step 1) inside a 512-port block, APDF"
	upnp-random "symmetric-random whose router maps ports on request: miniupnpd with UPnP IGD, NAT-PMP, PCP (--portmap)"
)

# Namespace suffixes, in creation order.
readonly SUFFIXES=(srv wan dla cgna nata a bga rtb dlb cgnb natb b bgb)
readonly ROUTER_B=203.0.113.21

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly DELAY_PROG="$HERE/natlab-delay.py" BG_PROG="$HERE/natlab-bgflows.py" RUN_DIR=/run/natlab

usage() {
	cat <<EOF
Usage:
  $PROG up   [--name LAB] [--loss PCT] [--rate MBIT] [--udp-timeout SECS] [--router-b]
             [--delay MS[/JITTER] [--reorder]] [--delay-a MS[/JITTER]]
             [--delay-b MS[/JITTER]] [--default-route]
             [--hairpin [a|b|both]] [--background-flows RATE]
             [--background-flows-a RATE] [--background-flows-b RATE]
             [--portmap upnp,natpmp,pcp|none] [--ipv6|--nat66]
             KIND_A [KIND_B]
  $PROG down [--name LAB]
  $PROG exec [--name LAB] NODE -- CMD [ARGS...]   # NODE: srv | a | b | nat-a | nat-b | wan
                                                  #       | rtb | dla | dlb | cgn-a | cgn-b
                                                  #       | bg-a | bg-b
  $PROG kinds           # list kinds, one per line, with a one-line description
  $PROG info [--name LAB]    # print the addresses (KEY=VALUE lines)
  $PROG list            # list labs present (by namespace prefix)

LAB defaults to '$DEFAULT_LAB' and must match ^[a-z][a-z0-9]{0,9}\$.
--loss PCT          drop PCT% (0-100) of the packets each NAT forwards, both ways
--rate MBIT         each NAT's uplink carries at most MBIT Mbit/s (1-100000)
                    each way: a token bucket (tc tbf) on the NAT's WAN and LAN
                    interfaces, queueing up to 20 ms, then dropping
--udp-timeout SECS  nf_conntrack_udp_timeout{,_stream} inside the NATs
--router-b          a router hop ($ROUTER_B) between the bridge and NAT B
--delay MS[/JITTER] a userspace delay element on each NAT's uplink: MS ms
                    (0-10000) one way, both directions (RTT host->server
                    +2*MS), +- uniform JITTER ms (0-MS); frames keep their
                    order unless --reorder; needs python3 and ethtool
--delay-a MS[/JITTER], --delay-b MS[/JITTER]
                    the same on one side's uplink only (overrides --delay
                    there): peers at different distances from the server
--reorder           with --delay: jitter may reorder frames
--default-route     each side's public NAT routes unknown destinations (the
                    other side's private LAN among them) out to SRV1, which
                    drops them: they take a NAT mapping first
--hairpin [a|b|both] the NAT(s) loop LAN packets to their own WAN address
                    back to the internal endpoint holding the port (RFC 4787
                    REQ-9); default: every side present; not for kinds none
                    and cgn-*
--background-flows RATE
                    other subscribers behind every NAT present open RATE
                    new UDP flows per second (1-1000) to $SRV_BG; needs python3
--background-flows-a RATE, --background-flows-b RATE
                    the same for one side only (overrides the above)
--portmap LIST      what the upnp-* kinds' miniupnpd serves: a comma-separated
                    subset of upnp, natpmp, pcp, or none (default: all three);
                    with wandown added its WAN interface is missing and it
                    answers every request with an error;
                    needs miniupnpd (apt-get install miniupnpd-nftables)
--ipv6              dual stack: routed IPv6 LANs behind stateful IPv6
                    firewalls (no NAT66), see the header; not with --router-b
--nat66             --ipv6, but the NAT kinds' LANs are ULA (fd00:1::/64,
                    fd00:2::/64) masqueraded to the NAT's WAN address; not
                    with the cgn-* kinds

Addresses: SRV1=$SRV1 SRV2=$SRV2 NAT_A=$NAT_A_WAN A=10.0.1.2 (gw 10.0.1.1)
           NAT_B=$NAT_B_WAN B=10.0.2.2 (gw 10.0.2.1)
           kind none: A=198.51.100.2 (gw .1/26), B=198.51.100.66 (gw .65/26)
           kinds cgn-*: the home NAT's WAN 100.64.1.2 (B: 100.64.2.2) behind
           a CGN (LAB-cgna, LAB-cgnb) holding NAT_A (NAT_B)
           kind upnp-*: NAT_A=$PM_A_WAN (B: $PM_B_WAN), in $PM_WAN_NET
           background flows: from BG_A=10.0.1.3 (BG_B=10.0.2.3; kind none
           .3/.67) in LAB-bga (LAB-bgb) to SRV_BG=$SRV_BG
           --ipv6: SRV1_V6=$SRV1_V6 SRV2_V6=$SRV2_V6 NAT_A_V6=$NAT_A_V6
           A_V6=2001:db8:1::2 NAT_B_V6=$NAT_B_V6 B_V6=2001:db8:2::2
           name $SRV_NAME in LAB-a and LAB-b (A, and AAAA with --ipv6)
Namespaces: LAB-srv LAB-wan [LAB-dla] [LAB-cgna] LAB-nata LAB-a [LAB-bga]
            [LAB-rtb] [LAB-dlb LAB-cgnb LAB-natb LAB-b LAB-bgb]
EOF
}

die() {
	echo "$PROG: $*" >&2
	exit 1
}

usage_error() {
	echo "$PROG: $*" >&2
	echo "Try '$PROG -h'." >&2
	exit 2
}

valid_lab() {
	[[ $1 =~ ^[a-z][a-z0-9]{0,9}$ ]] || usage_error "invalid lab name '$1' (must match ^[a-z][a-z0-9]{0,9}\$)"
}

valid_kind() {
	local i
	for ((i = 0; i < ${#KINDS[@]}; i += 2)); do
		[[ ${KINDS[i]} == "$1" ]] && return 0
	done
	usage_error "unknown kind '$1' (see '$PROG kinds')"
}

ns_exists() {
	[[ -e /run/netns/$1 ]]
}

# Namespaces of lab $1 that exist right now.
lab_namespaces() {
	local s
	for s in "${SUFFIXES[@]}"; do
		if ns_exists "$1-$s"; then echo "$1-$s"; fi
	done
}

need_tools() {
	[[ $(id -u) -eq 0 ]] || die "must run as root"
	command -v ip >/dev/null || die "'ip' (iproute2) not found"
	command -v nft >/dev/null || die "'nft' not found (apt-get install nftables)"
	if ((RATE > 0)); then
		command -v tc >/dev/null || die "--rate needs 'tc' (apt-get install iproute2)"
	fi
	if [[ -n $DELAY ]]; then
		command -v python3 >/dev/null || die "--delay needs 'python3'"
		command -v ethtool >/dev/null || die "--delay needs 'ethtool' (apt-get install ethtool)"
	fi
	if ((BG_RATE_A + BG_RATE_B > 0)); then
		command -v python3 >/dev/null || die "--background-flows needs 'python3'"
	fi
	if ((NEED_UPNPD == 1)); then
		command -v miniupnpd >/dev/null || die "kind upnp-* needs 'miniupnpd' (apt-get install miniupnpd-nftables)"
	fi
}

is_upnp() {
	[[ $1 == upnp-* ]]
}

# nsx NS CMD...: run CMD inside namespace NS.
nsx() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

is_cgn() {
	[[ $1 == cgn-* ]]
}

# is_nat66 KIND: with --nat66, a side of KIND translates IPv6 (every kind
# but none).
is_nat66() {
	((NAT66 == 1)) && [[ $1 != none ]]
}

# Per-side addressing.  Sets globals for side $1 (a|b) with kind $2; for the
# cgn-* kinds also S_CGN_IN/S_HOME_WAN/S_CGN_NET (RFC 6598) and S_BLOCK_LO.
side_vars() {
	local side=$1 kind=$2 n=1
	[[ $side == a ]] || n=2
	S_CGN_NET=100.64.$n.0/24 S_CGN_IN=100.64.$n.1 S_HOME_WAN=100.64.$n.2
	S_BLOCK_LO=$((BLOCK_BASE + (n - 1) * BLOCK_SIZE))
	if [[ $side == a ]]; then
		S_WAN=$NAT_A_WAN
		if is_upnp "$kind"; then S_WAN=$PM_A_WAN; fi
		if [[ $kind == none ]]; then
			S_NET=198.51.100.0/26 S_GW=198.51.100.1 S_HOST=198.51.100.2 S_PFX=26
		else
			S_NET=10.0.1.0/24 S_GW=10.0.1.1 S_HOST=10.0.1.2 S_PFX=24
		fi
	else
		S_WAN=$NAT_B_WAN
		if is_upnp "$kind"; then S_WAN=$PM_B_WAN; fi
		if [[ $kind == none ]]; then
			S_NET=198.51.100.64/26 S_GW=198.51.100.65 S_HOST=198.51.100.66 S_PFX=26
		else
			S_NET=10.0.2.0/24 S_GW=10.0.2.1 S_HOST=10.0.2.2 S_PFX=24
		fi
	fi
	# The other subscribers of --background-flows: the host's address + 1.
	S_BG=${S_HOST%.*}.$((${S_HOST##*.} + 1))
	# --ipv6: the same shape on both sides, whatever the kind.
	S_NET6=2001:db8:$n::/64 S_GW6=2001:db8:$n::1 S_HOST6=2001:db8:$n::2
	if is_nat66 "$kind"; then
		S_NET6=fd00:$n::/64 S_GW6=fd00:$n::1 S_HOST6=fd00:$n::2
	fi
	S_CGN_IN6=2001:db8:c$n::1 S_HOME_WAN6=2001:db8:c$n::2
	S_WAN6=$NAT_A_V6
	[[ $side == a ]] || S_WAN6=$NAT_B_V6
}

# "0 : base, 1 : base+1, ..." - the body of an anonymous nft map from an
# index to a port.  A map is used because "numgen ... offset P" (and likewise
# "jhash ... offset P") lands in host byte order and yields byte-swapped ports.
port_map_body() {
	local base=$1 count=$2 i out=""
	for ((i = 0; i < count; i++)); do
		out+="${out:+, }$i : $((base + i))"
	done
	printf '%s' "$out"
}

# Print the nftables ruleset for a NAT of kind $1 with WAN address $2, LAN
# prefix $3, loss percentage $4, dynamic-map timeout $5 (seconds), for the
# cgn-* kinds (the CGN's own ruleset) the first port $6 of its block, and
# hairpinning $7 (1: on; not for kind none or the cgn-* kinds).
ruleset() {
	local kind=$1 wan=$2 lan=$3 loss=$4 map_timeout=$5 block_lo=${6:-0} hairpin=${7:-0}
	local loss_rule="" snat="" other_snat="" map_decl="" dnat="" learn="" inbound_accept="" unsolicited=""
	local hp_decl="" hp_dnat="" hp_learn="" hp_snat="" hp_accept="" pm_input=""

	if ((loss > 0)); then
		# numgen random is drawn per packet: independent loss in both directions.
		loss_rule="numgen random mod 100 < $loss drop"
	fi

	if [[ $kind == none ]]; then
		# A plain router: only the loss rule, nothing filtered, nothing translated.
		cat <<EOF
table ip natlab {
	chain forward {
		type filter hook forward priority filter; policy accept;
		$loss_rule
	}
}
EOF
		return
	fi

	# Mapping.  Plain masquerade is endpoint-independent and port preserving:
	# the kernel first reuses an existing mapping of the same internal
	# ip:port (find_appropriate_src), else keeps the source port if free.
	case $kind in
	symmetric-random | upnp-random)
		# fully-random skips both of the above: random port per new 5-tuple.
		snat="masquerade fully-random"
		;;
	symmetric-sequential | address-dependent | cgn-*)
		# These rules only handle TCP and UDP; ICMP (ping) still gets out.
		other_snat="oifname \"wan0\" ip saddr $lan masquerade"
		;;&
	symmetric-sequential)
		# One counter for the whole NAT; a single-port range per flow means
		# the kernel cannot fall back to reusing an older mapping.
		snat="meta l4proto { tcp, udp } snat ip to $wan : numgen inc mod $SEQ_COUNT map { $(port_map_body "$SEQ_BASE" "$SEQ_COUNT") }"
		;;
	address-dependent)
		# Same internal ip:port and same remote ip -> same hash -> same port.
		# Unlike a NAT with a port table, two internal ports whose hashes
		# meet toward the same remote ip:port cannot both be mapped: the
		# second flow is dropped (about k/4096 for a new flow beside k
		# others, TIME_WAIT ones included), its SYN retransmissions too.
		snat="meta l4proto { tcp, udp } snat ip to $wan : jhash ip saddr . th sport . ip daddr mod $HASH_COUNT map { $(port_map_body "$HASH_BASE" "$HASH_COUNT") }"
		;;
	cgn-block-random)
		# "random" draws every new 5-tuple's port from the block (it also
		# skips the reuse of an existing mapping: APDM).
		snat="meta l4proto { tcp, udp } snat ip to $wan : $block_lo-$((block_lo + BLOCK_SIZE - 1)) random"
		;;
	cgn-eim-translated)
		# Without "random" the kernel reuses the mapping an internal
		# ip:port already has (EIM); the home NAT's source port lies outside
		# the block, so it is always translated into it.
		snat="meta l4proto { tcp, udp } snat ip to $wan : $block_lo-$((block_lo + BLOCK_SIZE - 1))"
		;;
	cgn-block-sequential)
		# As symmetric-sequential, with the counter running over the block.
		snat="meta l4proto { tcp, udp } snat ip to $wan : numgen inc mod $BLOCK_SIZE map { $(port_map_body "$block_lo" "$BLOCK_SIZE") }"
		;;
	*)
		snat="masquerade"
		;;
	esac

	# Filtering.  Conntrack alone gives address-and-port-dependent filtering.
	# Looser filtering needs inbound DNAT from a map learned from outbound
	# packets (after srcnat, so th sport is the public port).  "ct direction
	# original" keeps replies of DNAT'd flows from overwriting the map.
	case $kind in
	full-cone)
		map_decl="map pub { type inet_proto . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout ${map_timeout}s; }"
		dnat="iifname \"wan0\" ip daddr $wan meta l4proto { tcp, udp } dnat ip to meta l4proto . th dport map @pub"
		learn="oifname \"wan0\" ct direction original ct status snat meta l4proto { tcp, udp } update @pub { meta l4proto . th sport : ct original ip saddr . ct original proto-src }"
		inbound_accept="iifname \"wan0\" oifname \"lan0\" ct status dnat accept"
		;;
	restricted-cone)
		# The remote IP is part of the key: only IPs we sent to may come in.
		map_decl="map pub { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout ${map_timeout}s; }"
		dnat="iifname \"wan0\" ip daddr $wan meta l4proto { tcp, udp } dnat ip to ip saddr . meta l4proto . th dport map @pub"
		learn="oifname \"wan0\" ct direction original ct status snat meta l4proto { tcp, udp } update @pub { ip daddr . meta l4proto . th sport : ct original ip saddr . ct original proto-src }"
		inbound_accept="iifname \"wan0\" oifname \"lan0\" ct status dnat accept"
		;;
	upnp-random)
		# Inbound to what miniupnpd mapped: its dnat rules (table inet
		# miniupnpd) mark those flows "ct status dnat".
		inbound_accept="iifname \"wan0\" oifname \"lan0\" ct status dnat accept"
		# --portmap: NAT-PMP and PCP share miniupnpd's switch and port; the
		# first payload byte (the version) tells them apart.  With neither,
		# nothing listens on 5351 and the kernel answers ICMP port
		# unreachable, as a router without the service does.
		if [[ ,$PORTMAP, == *,natpmp,* || ,$PORTMAP, == *,pcp,* ]]; then
			[[ ,$PORTMAP, == *,natpmp,* ]] || pm_input+="iifname \"lan0\" udp dport 5351 @th,64,8 0 drop; "
			[[ ,$PORTMAP, == *,pcp,* ]] || pm_input+="iifname \"lan0\" udp dport 5351 @th,64,8 2 drop; "
		fi
		;;
	esac

	# Hairpinning (RFC 4787 section 6, REQ-9): a packet from the LAN to the
	# NAT's own WAN address and a public port is DNAT'd to the internal
	# endpoint holding that port, found in a map {proto . public port} learned
	# like full-cone's (every kind here keeps one public port per internal
	# endpoint and flow, so the map names its holder), whatever the kind's
	# filtering: the hairpinned packet is not inbound from the Internet.  Its
	# source becomes the sender's mapping (REQ-9b, "external source IP address
	# and port"): "snat" with the kind's own allocation, and without "random"
	# the kernel reuses a mapping the sender's ip:port already has
	# (find_appropriate_src), as it does for outbound flows.  A port nobody
	# holds misses the map and is dropped by "input" as without hairpinning.
	if ((hairpin == 1)); then
		hp_decl="map hp { type inet_proto . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout ${map_timeout}s; }"
		hp_dnat="iifname \"lan0\" ip daddr $wan meta l4proto { tcp, udp } dnat ip to meta l4proto . th dport map @hp"
		hp_learn="oifname \"wan0\" ct direction original ct status snat meta l4proto { tcp, udp } update @hp { meta l4proto . th sport : ct original ip saddr . ct original proto-src }"
		case $snat in
		masquerade*) hp_snat="snat ip to $wan${snat#masquerade}" ;; # masquerade would take lan0's address
		*) hp_snat=$snat ;;
		esac
		# "ip saddr $lan" keeps inbound DNAT'd flows of the cone kinds (also
		# "ct status dnat", also out of lan0) from being translated.
		hp_snat="oifname \"lan0\" ip saddr $lan ct status dnat $hp_snat"
		hp_accept="iifname \"lan0\" oifname \"lan0\" ct status dnat accept"
	fi

	# What the NAT does with unsolicited inbound packets addressed to itself.
	# They are rejected/dropped in "input" so their conntrack entry is never
	# confirmed: a confirmed one would occupy the port and make a later
	# outbound flow from the LAN get a different (random) public port.
	case $kind in
	port-restricted-rst)
		unsolicited="iifname \"wan0\" tcp flags & (syn | ack) == syn reject with tcp reset"
		;;
	port-restricted-icmp)
		unsolicited="iifname \"wan0\" meta l4proto { tcp, udp } reject with icmp type port-unreachable"
		;;
	esac

	cat <<EOF
table ip natlab {
	$map_decl
	$hp_decl

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		$dnat
		$hp_dnat
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" ip saddr $lan $snat
		$other_snat
		$hp_snat
	}

	chain learn {
		type filter hook postrouting priority srcnat + 10; policy accept;
		$learn
		$hp_learn
	}

	chain forward {
		type filter hook forward priority filter; policy drop;
		$loss_rule
		ct state established,related accept
		iifname "lan0" oifname "wan0" accept
		$inbound_accept
		$hp_accept
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iif "lo" accept
		ct state established,related accept
		iifname "lan0" ip daddr $wan drop
		$pm_input
		iifname "lan0" accept
		iifname "wan0" icmp type echo-request accept
		$unsolicited
		iifname "wan0" drop
	}
}
EOF
}

# Print the IPv6 ruleset of a NAT of kind $1 (--ipv6) with loss percentage
# $2: no translation, a stateful firewall (conntrack alone: address-and-
# port-dependent filtering) for every kind but none.  The kinds that
# answer unsolicited inbound with a RST or an ICMP error do so here too.
ruleset6() {
	local kind=$1 loss=$2 loss_rule="" unsolicited="" nat66=""
	if ((loss > 0)); then loss_rule="numgen random mod 100 < $loss drop"; fi
	if [[ $kind == none ]]; then
		cat <<EOF
table ip6 natlab6 {
	chain forward {
		type filter hook forward priority filter; policy accept;
		$loss_rule
	}
}
EOF
		return
	fi
	case $kind in
	port-restricted-rst)
		unsolicited="iifname \"wan0\" tcp flags & (syn | ack) == syn reject with tcp reset"
		;;
	port-restricted-icmp)
		unsolicited="iifname \"wan0\" meta l4proto { tcp, udp } reject with icmpv6 type port-unreachable"
		;;
	esac
	if is_nat66 "$kind"; then
		local lan6=fd00::/16
		case $kind in
		*-random) nat66="oifname \"wan0\" ip6 saddr $lan6 masquerade fully-random" ;;
		*) nat66="oifname \"wan0\" ip6 saddr $lan6 masquerade" ;;
		esac
		nat66="chain postrouting { type nat hook postrouting priority srcnat; policy accept; $nat66; }"
	fi
	# Neighbour discovery is link-local and never forwarded, but the
	# router's own input must take it, or its links die.
	cat <<EOF
table ip6 natlab6 {
	$nat66

	chain forward {
		type filter hook forward priority filter; policy drop;
		$loss_rule
		ct state established,related accept
		iifname "lan0" oifname "wan0" accept
		$unsolicited
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iif "lo" accept
		ct state established,related accept
		icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept
		iifname "lan0" accept
		iifname "wan0" icmpv6 type echo-request accept
		iifname "wan0" drop
	}
}
EOF
}

# ---- up ------------------------------------------------------------------

CREATED=()   # namespaces made by this "up", removed again if it fails
UP_DONE=0
UP_LAB=""
DELAY=""     # --delay: "MS JITTER" once parsed, empty without
DELAY_A=""   # --delay-a (or --delay): side A's element, "MS JITTER" or empty
DELAY_B=""   # --delay-b (or --delay): side B's
REORDER=0
RATE=0           # --rate, Mbit/s; 0: no shaper
DEFAULT_ROUTE=0  # --default-route
HAIRPIN_A=0 HAIRPIN_B=0   # --hairpin, per side
BG_RATE_A=0 BG_RATE_B=0   # --background-flows*, per side (0: none)
PORTMAP=$PORTMAP_ALL      # --portmap
IPV6=0                    # --ipv6
NAT66=0                   # --nat66
NEED_UPNPD=0              # an upnp-* kind is in the lab

up_cleanup() {
	local rc=$? ns
	if ((UP_DONE == 0 && ${#CREATED[@]} > 0)); then
		echo "$PROG: up failed, removing what it created" >&2
		stop_helpers "$UP_LAB"
		for ns in "${CREATED[@]}"; do
			kill_ns_pids "$ns"
			ip netns del "$ns" 2>/dev/null || true
		done
		remove_hosts "$UP_LAB"
	fi
	exit "$rc"
}

new_ns() {
	local ns=$1
	ip netns add "$ns"
	CREATED+=("$ns")
	# rp_filter off (asymmetric paths are expected in a lab), no IPv6 (see
	# header); "default" first so that interfaces created later inherit it.
	nsx "$ns" sysctl -qw \
		net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.all.rp_filter=0 \
		net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1
	if ((IPV6 == 1)); then
		# Inherited by the interfaces made later, before IPv6 is turned on
		# (enable_v6): no DAD delay, no SLAAC, no RS/RA chatter.
		nsx "$ns" sysctl -qw \
			net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0 \
			net.ipv6.conf.default.accept_ra=0 net.ipv6.conf.all.accept_ra=0 \
			net.ipv6.conf.default.autoconf=0 net.ipv6.conf.all.autoconf=0 \
			net.ipv6.conf.default.router_solicitations=0 net.ipv6.conf.all.router_solicitations=0
	fi
	ip -n "$ns" link set lo up
}

# enable_v6 NS [forward]: IPv6 on in NS (every interface it has now), with
# forwarding when asked (--ipv6).
enable_v6() {
	nsx "$1" sysctl -qw net.ipv6.conf.default.disable_ipv6=0 net.ipv6.conf.all.disable_ipv6=0
	if [[ ${2:-} == forward ]]; then nsx "$1" sysctl -qw net.ipv6.conf.all.forwarding=1; fi
}

# write_hosts LAB NS: /etc/netns/NS/hosts, which "ip netns exec NS" mounts
# over /etc/hosts, with the server's name (A, and AAAA with --ipv6).
write_hosts() {
	local dir="/etc/netns/$2"
	mkdir -p "$dir"
	{
		echo "127.0.0.1 localhost"
		echo "::1 localhost ip6-localhost ip6-loopback"
		echo "$SRV1 $SRV_NAME"
		if ((IPV6 == 1)); then echo "$SRV1_V6 $SRV_NAME"; fi
	} >"$dir/hosts"
}

# remove_hosts LAB: what write_hosts made for the lab's hosts.
remove_hosts() {
	local side
	[[ -n $1 ]] || return 0
	for side in a b; do
		rm -f "/etc/netns/$1-$side/hosts"
		rmdir "/etc/netns/$1-$side" 2>/dev/null || true
	done
}

# build_side_v6 LAB SIDE KIND LOSS (--ipv6): addresses, routes toward the
# server and the firewall of one side; its namespaces exist already.
build_side_v6() {
	local lab=$1 side=$2 kind=$3 loss=$4
	local nat="$lab-nat$side" host="$lab-$side" outer="$lab-nat$side"
	side_vars "$side" "$kind"
	if is_cgn "$kind"; then
		outer="$lab-cgn$side"
		enable_v6 "$outer" forward
		ip -n "$outer" addr add "$S_WAN6/$WAN6_PREFIX" dev wan0 nodad
		ip -n "$outer" addr add "$S_CGN_IN6/64" dev lan0 nodad
		ip -n "$outer" route add "$S_NET6" via "$S_HOME_WAN6"
		enable_v6 "$nat" forward
		ip -n "$nat" addr add "$S_HOME_WAN6/64" dev wan0 nodad
		ip -n "$nat" route add default via "$S_CGN_IN6"
	else
		enable_v6 "$nat" forward
		ip -n "$nat" addr add "$S_WAN6/$WAN6_PREFIX" dev wan0 nodad
	fi
	ip -n "$nat" addr add "$S_GW6/64" dev lan0 nodad
	enable_v6 "$host"
	ip -n "$host" addr add "$S_HOST6/64" dev eth0 nodad
	ip -n "$host" route add default via "$S_GW6"
	ruleset6 "$kind" "$loss" | nsx "$nat" nft -f -
}

# route_v6_side LAB SIDE OTHER (--ipv6): srv and the other side's outer
# router reach SIDE's LAN via its router's WAN address.
route_v6_side() {
	local lab=$1 side=$2 other=$3 kind=$4
	# A NAT66 side's LAN is reached through its WAN address, not routed.
	if is_nat66 "$kind"; then return 0; fi
	side_vars "$side" none
	ip -n "$lab-srv" route add "$S_NET6" via "$S_WAN6"
	if ns_exists "$lab-cgn$other"; then
		ip -n "$lab-cgn$other" route add "$S_NET6" via "$S_WAN6"
	elif ns_exists "$lab-nat$other"; then
		ip -n "$lab-nat$other" route add "$S_NET6" via "$S_WAN6"
	fi
}

# tx_csum_off NS IF: the interface computes UDP/TCP checksums itself.  Frames
# it sends otherwise carry unfinished checksums (CHECKSUM_PARTIAL), which the
# delay element copies verbatim and the receiver then drops.  Only with
# --delay, so that the lab without it stays as it was.
tx_csum_off() {
	[[ -n $DELAY ]] || return 0
	nsx "$1" ethtool -K "$2" tx off >/dev/null
}

# side_delay SIDE: that side's element, "MS JITTER", or empty for none.
side_delay() {
	if [[ $1 == a ]]; then echo "$DELAY_A"; else echo "$DELAY_B"; fi
}

# uplink LAB SIDE PEER_NS PEER_IF NAT_NS: the NAT's wan0, its peer PEER_IF in
# PEER_NS (the bridge's or the router's namespace; the caller configures
# it), and with --delay the delay element's namespace in between.
uplink() {
	local lab=$1 side=$2 peer_ns=$3 peer_if=$4 nat=$5
	local dl="$lab-dl$side" delay_ms jitter_ms delay
	delay=$(side_delay "$side")
	if [[ -z $delay ]]; then
		ip -n "$peer_ns" link add "$peer_if" type veth peer name wan0 netns "$nat"
	else
		new_ns "$dl"
		ip -n "$peer_ns" link add "$peer_if" type veth peer name up0 netns "$dl"
		ip -n "$dl" link add dn0 type veth peer name wan0 netns "$nat"
	fi
	# Also without an element of its own: the other side's reads what these send.
	tx_csum_off "$nat" wan0
	tx_csum_off "$peer_ns" "$peer_if"
	[[ -n $delay ]] || return 0
	local dev
	for dev in up0 dn0; do
		# GRO could merge frames into one larger than the MTU, which the
		# element could then not send on.
		nsx "$dl" ethtool -K "$dev" tx off gro off >/dev/null
		ip -n "$dl" link set "$dev" up
	done
	read -r delay_ms jitter_ms <<<"$delay"
	start_delay "$dl" up0 dn0 "$delay_ms" "$jitter_ms"
}

# start_helper NS WHAT PROG ARGS...: runs the python helper PROG in NS with
# --pidfile and --netns before ARGS, detached (own session, no inherited
# stdout/stderr, which would keep a caller reading natlab.sh's output
# waiting), and waits for its pid file: it is ready then.  WHAT names it in
# the error when it does not start.
start_helper() {
	local ns=$1 what=$2 prog=$3 i pid
	shift 3
	local pidfile="$RUN_DIR/$ns.pid" log="$RUN_DIR/$ns.log"
	mkdir -p "$RUN_DIR"
	rm -f "$pidfile"
	nsx "$ns" setsid python3 "$prog" --pidfile "$pidfile" --netns "$ns" "$@" </dev/null >"$log" 2>&1 &
	pid=$!
	for ((i = 0; i < 100; i++)); do
		[[ -s $pidfile ]] && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	die "$what in $ns did not start: $(tail -n 5 "$log" 2>/dev/null | tr '\n' ' ')"
}

# start_delay NS IF1 IF2 MS JITTER: the delay element (natlab-delay.py) in NS.
start_delay() {
	local extra=()
	((REORDER == 0)) || extra+=(--reorder)
	start_helper "$1" "delay element" "$DELAY_PROG" "${extra[@]}" "$2" "$3" "$4" "$5"
}

# start_bgflows NS SRC RATE: the other subscribers' flow generator
# (natlab-bgflows.py) in NS, from address SRC.
start_bgflows() {
	start_helper "$1" "background flows" "$BG_PROG" --src "$2" --dst "$SRV_BG" --rate "$3"
}

# stop_helpers LAB: stops the lab's delay elements and background-flow
# generators by the pids in their pid files (only a process that is still
# natlab-delay.py or natlab-bgflows.py: pids get reused), and removes pid
# files and logs.
stop_helpers() {
	local lab=$1 node pidfile pid i
	[[ -n $lab ]] || return 0
	for node in dla dlb bga bgb; do
		pidfile="$RUN_DIR/$lab-$node.pid"
		pid=$(cat "$pidfile" 2>/dev/null || true)
		if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
			grep -qE "natlab-(delay|bgflows)\.py .*--netns $lab-$node( |\$)"; then
			kill -TERM "$pid" 2>/dev/null || true
			for ((i = 0; i < 40; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.05
			done
			kill -KILL "$pid" 2>/dev/null || true
		fi
		rm -f "$pidfile" "$RUN_DIR/$lab-$node.log"
	done
}

# shape_uplink NS (--rate): a token bucket on the NAT's WAN side (what its
# LAN sends out) and its LAN side (what the LAN receives), as on a subscriber
# line of RATE Mbit/s each way.  Bucket: 1 ms at the rate, at least ten
# full-size frames (tbf splits a larger offload super-packet into frames);
# queue: 20 ms at the rate, beyond which the line drops, as a router's buffer
# does, so a sender that overruns it sees congestion loss.
shape_uplink() {
	local burst=$((RATE * 125)) dev
	((burst >= 15140)) || burst=15140
	for dev in wan0 lan0; do
		tc -n "$1" qdisc add dev "$dev" root tbf rate "${RATE}mbit" burst "$burst" latency 20ms
	done
}

# build_side LAB SIDE KIND LOSS UDP_TIMEOUT HAIRPIN BG_RATE
build_side() {
	local lab=$1 side=$2 kind=$3 loss=$4 udp_timeout=$5 hairpin=$6 bg_rate=$7
	local nat="$lab-nat$side" host="$lab-$side" bg="$lab-bg$side" map_timeout ns
	# outer: the namespace holding the public address (the NAT, or its CGN).
	local outer=$nat nat_kind=$kind nat_wan nat_loss=$loss
	side_vars "$side" "$kind"
	nat_wan=$S_WAN

	if is_cgn "$kind"; then
		outer="$lab-cgn$side"
		new_ns "$outer"
	fi
	new_ns "$nat"
	new_ns "$host"
	if ((bg_rate > 0)); then new_ns "$bg"; fi

	if [[ $side == b && $ROUTER == 1 ]]; then
		build_router_b "$lab"
		uplink "$lab" "$side" "$lab-rtb" down0 "$outer"
		ip -n "$lab-rtb" link set down0 up
		ip -n "$lab-rtb" addr add "$ROUTER_B/32" dev down0
		ip -n "$lab-rtb" route add "$S_WAN/32" dev down0
		nsx "$lab-rtb" sysctl -qw net.ipv4.conf.down0.proxy_arp=1 net.ipv4.neigh.down0.proxy_delay=0
	else
		uplink "$lab" "$side" "$lab-wan" "nat$side" "$outer"
		ip -n "$lab-wan" link set "nat$side" master br0 up
	fi
	if ((bg_rate > 0)); then
		# One LAN segment for the host and the other subscribers: lan0 is a
		# bridge (the NAT's rules name lan0 either way).
		ip -n "$nat" link add lan0 type bridge
		# br_netfilter (built in here) would run the NAT's ip hooks on
		# bridged frames too: a packet DNAT'd back to its own sender would
		# then be bridged out of the port it came from, i.e. dropped.  The
		# LAN is a plain switch; only routed packets meet the rules.
		nsx "$nat" sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
			net.bridge.bridge-nf-call-arptables=0
		if ((IPV6 == 1)); then nsx "$nat" sysctl -qw net.bridge.bridge-nf-call-ip6tables=0; fi
		ip -n "$nat" link add lanh type veth peer name eth0 netns "$host"
		ip -n "$nat" link add lanbg type veth peer name eth0 netns "$bg"
		ip -n "$nat" link set lanh master lan0 up
		ip -n "$nat" link set lanbg master lan0 up
		ip -n "$bg" addr add "$S_BG/$S_PFX" dev eth0
		ip -n "$bg" link set eth0 up
		ip -n "$bg" route add default via "$S_GW"
	else
		ip -n "$nat" link add lan0 type veth peer name eth0 netns "$host"
	fi

	if is_cgn "$kind"; then
		# The CGN: public wan0, lan0 to the home NAT's WAN in 100.64.0.0/10.
		ip -n "$outer" link add lan0 type veth peer name wan0 netns "$nat"
		ip -n "$outer" addr add "$S_WAN/$WAN_PREFIX" dev wan0
		ip -n "$outer" addr add "$S_CGN_IN/24" dev lan0
		ip -n "$outer" link set wan0 up
		ip -n "$outer" link set lan0 up
		ip -n "$nat" addr add "$S_HOME_WAN/24" dev wan0
		nat_kind=$CGN_HOME_KIND nat_wan=$S_HOME_WAN nat_loss=0
	else
		ip -n "$nat" addr add "$S_WAN/$WAN_PREFIX" dev wan0
	fi
	ip -n "$nat" addr add "$S_GW/$S_PFX" dev lan0
	ip -n "$nat" link set wan0 up
	ip -n "$nat" link set lan0 up
	if is_cgn "$kind"; then ip -n "$nat" route add default via "$S_CGN_IN"; fi
	# upnp-*: the rest of the WAN is another /24 on the same segment.
	if is_upnp "$kind"; then ip -n "$nat" route add "$WAN_NET" dev wan0; fi
	# srv has forwarding off (a new namespace's default) and drops what is routed to it
	# for another address, without an ICMP error.
	if ((DEFAULT_ROUTE == 1)); then ip -n "$outer" route add default via "$SRV1"; fi
	ip -n "$host" addr add "$S_HOST/$S_PFX" dev eth0
	ip -n "$host" link set eth0 up
	ip -n "$host" route add default via "$S_GW"
	if ((loss > 0)); then
		# The host's TCP would otherwise hand the veth 64 KB segmentation-offload
		# super-packets, which the NAT forwards whole, so the loss rule would drop
		# 45 wire packets at once: the host segments, loss is per packet.
		nsx "$host" ethtool -K eth0 tso off gso off >/dev/null 2>&1 ||
			echo "$PROG: warning: ethtool could not turn segmentation offload off; TCP loses whole 64 KB bursts" >&2
	fi

	for ns in "$nat" "$outer"; do
		nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
		if [[ -n $udp_timeout ]]; then
			# These are per network namespace (checked by natlab-selftest.sh).
			nsx "$ns" sysctl -qw \
				net.netfilter.nf_conntrack_udp_timeout="$udp_timeout" \
				net.netfilter.nf_conntrack_udp_timeout_stream="$udp_timeout"
		fi
	done
	if [[ -n $udp_timeout ]]; then
		map_timeout=$udp_timeout
	else
		map_timeout=$(nsx "$nat" sysctl -n net.netfilter.nf_conntrack_udp_timeout_stream)
	fi

	ruleset "$nat_kind" "$nat_wan" "$S_NET" "$nat_loss" "$map_timeout" 0 "$hairpin" | nsx "$nat" nft -f -
	if is_cgn "$kind"; then
		# Loss only here: a path through the double NAT loses what one NAT's would.
		ruleset "$kind" "$S_WAN" "$S_CGN_NET" "$loss" "$map_timeout" "$S_BLOCK_LO" | nsx "$outer" nft -f -
	fi

	if ((IPV6 == 1)); then build_side_v6 "$lab" "$side" "$kind" "$loss"; fi
	if ((RATE > 0)); then shape_uplink "$nat"; fi

	# The interface alias records the lab's parameters for "info"; it goes
	# away with the namespace, so no state file can go stale.
	local delay_info=none delay
	delay=$(side_delay "$side")
	if [[ -n $delay ]]; then
		delay_info=${delay% *}
		[[ ${delay#* } == 0 ]] || delay_info+="/${delay#* }"
	fi
	ip -n "$nat" link set dev wan0 alias "natlab kind=$kind loss=$loss udp_timeout=${udp_timeout:-default} delay=$delay_info rate=$RATE reorder=$REORDER default_route=$DEFAULT_ROUTE hairpin=$hairpin bg_flows=$bg_rate portmap=$(is_upnp "$kind" && echo "${PORTMAP:-none}" || echo none) ipv6=$IPV6 nat66=$NAT66"
}

# The router in front of NAT B: a bridge port up0 with the router's address,
# forwarding, and proxy ARP so that NAT B keeps its on-link /24 view of the
# "internet" and the others keep theirs of NAT B.
build_router_b() {
	local lab=$1
	new_ns "$lab-rtb"
	ip -n "$lab-wan" link add rtb type veth peer name up0 netns "$lab-rtb"
	ip -n "$lab-wan" link set rtb master br0 up
	tx_csum_off "$lab-rtb" up0
	ip -n "$lab-rtb" addr add "$ROUTER_B/$WAN_PREFIX" dev up0
	ip -n "$lab-rtb" link set up0 up
	# proxy_delay: answer proxied ARP at once (the default waits up to 0.8 s, which the
	# first packets across the router would otherwise spend queued).
	nsx "$lab-rtb" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.up0.proxy_arp=1 \
		net.ipv4.neigh.up0.proxy_delay=0
}

# route_portmap_side LAB SIDE OTHER: srv and the other side's outer NAT reach
# an upnp-* side's WAN address (in PM_WAN_NET) on-link, on the shared bridge.
route_portmap_side() {
	local lab=$1 side=$2 other=$3
	# replace: with upnp-* on both sides the second call finds the route.
	ip -n "$lab-srv" route replace "$PM_WAN_NET" dev eth0
	if ns_exists "$lab-cgn$other"; then
		ip -n "$lab-cgn$other" route add "$PM_WAN_NET" dev wan0
	elif ns_exists "$lab-nat$other"; then
		ip -n "$lab-nat$other" route replace "$PM_WAN_NET" dev wan0
	fi
}

# start_upnpd LAB SIDE: miniupnpd in that side's NAT, serving what --portmap
# names, its rules in the table "inet miniupnpd" made here (Debian's
# nft_init.sh would make the same chains in the root namespace).  Its dnat
# chain runs before the lab's (dstnat - 1) and its snat chain too (srcnat -
# 1): NAT rules of the first chain that translates a flow win, so that an
# outbound flow from a mapped internal port leaves from the mapped port.
start_upnpd() {
	local lab=$1 side=$2
	local nat="$lab-nat$side" i natpmp=no upnp=no
	local conf="$RUN_DIR/$nat-upnpd.conf" pidfile="$RUN_DIR/$nat-upnpd.pid" log="$RUN_DIR/$nat-upnpd.log"
	[[ ,$PORTMAP, == *,natpmp,* || ,$PORTMAP, == *,pcp,* ]] && natpmp=yes
	[[ ,$PORTMAP, == *,upnp,* ]] && upnp=yes
	local ext=wan0
	[[ ,$PORTMAP, == *,wandown,* ]] && ext=wan9
	# --portmap none: a router without the service (miniupnpd will not run with
	# nothing enabled).
	[[ $natpmp == yes || $upnp == yes ]] || return 0
	nsx "$nat" nft -f - <<-EOF
		table inet miniupnpd {
			chain forward { type filter hook forward priority filter - 1; policy accept; jump miniupnpd; }
			chain miniupnpd { }
			chain prerouting { type nat hook prerouting priority dstnat - 1; policy accept; jump prerouting_miniupnpd; }
			chain prerouting_miniupnpd { }
			chain postrouting { type nat hook postrouting priority srcnat - 1; policy accept; jump postrouting_miniupnpd; }
			chain postrouting_miniupnpd { }
		}
	EOF
	mkdir -p "$RUN_DIR"
	# A fixed uuid per side: the description is the same every run.
	cat >"$conf" <<-EOF
		ext_ifname=$ext
		listening_ip=lan0
		http_port=5000
		enable_upnp=$upnp
		enable_natpmp=$natpmp
		secure_mode=yes
		system_uptime=no
		notify_interval=60
		clean_ruleset_interval=600
		uuid=3d3cec3a-8cf0-11e0-98ee-00000000000$([[ $side == a ]] && echo 1 || echo 2)
		upnp_table_name=miniupnpd
		upnp_nat_table_name=miniupnpd
		upnp_forward_chain=miniupnpd
		upnp_nat_chain=prerouting_miniupnpd
		upnp_nat_postrouting_chain=postrouting_miniupnpd
		allow 1024-65535 $S_NET 1024-65535
		deny 0-65535 0.0.0.0/0 0-65535
	EOF
	rm -f "$pidfile"
	nsx "$nat" setsid miniupnpd -f "$conf" -d -4 -P "$pidfile" </dev/null >"$log" 2>&1 &
	# Ready when it listens for what it serves (nothing to wait for with none).
	for ((i = 0; i < 100; i++)); do
		if { [[ $natpmp == no ]] || nsx "$nat" ss -Hlun 'sport = :5351' | grep -q .; } &&
			{ [[ $upnp == no ]] || nsx "$nat" ss -Hltn 'sport = :5000' | grep -q .; }; then
			kill -0 $! 2>/dev/null || die "miniupnpd in $nat exited: $(tail -n 5 "$log" | tr '\n' ' ')"
			return 0
		fi
		kill -0 $! 2>/dev/null || die "miniupnpd in $nat exited: $(tail -n 5 "$log" | tr '\n' ' ')"
		sleep 0.05
	done
	die "miniupnpd in $nat did not start: $(tail -n 5 "$log" | tr '\n' ' ')"
}

# Route a "none" side's public LAN via its router from srv and the other NAT
# (its CGN, which holds the other side's public address, if it has one).
route_public_side() {
	local lab=$1 side=$2 other=$3
	side_vars "$side" none
	ip -n "$lab-srv" route add "$S_NET" via "$S_WAN"
	if ns_exists "$lab-cgn$other"; then
		ip -n "$lab-cgn$other" route add "$S_NET" via "$S_WAN"
	elif ns_exists "$lab-nat$other"; then
		ip -n "$lab-nat$other" route add "$S_NET" via "$S_WAN"
	fi
}

# parse_delay OPTION VALUE: "MS JITTER" for MS[/JITTER], empty for an empty
# VALUE (no element); a usage error otherwise.
parse_delay() {
	[[ -n $2 ]] || return 0
	if ! [[ $2 =~ ^([0-9]{1,5})(/([0-9]{1,5}))?$ ]] ||
		((10#${BASH_REMATCH[1]} > 10000 || 10#${BASH_REMATCH[3]:-0} > 10#${BASH_REMATCH[1]})); then
		usage_error "$1 must be MS or MS/JITTER, integers with 0 <= JITTER <= MS <= 10000"
	fi
	echo "$((10#${BASH_REMATCH[1]})) $((10#${BASH_REMATCH[3]:-0}))"
}

cmd_up() {
	local lab=$DEFAULT_LAB loss=0 rate="" udp_timeout="" delay="" delay_a="" delay_b="" kinds=() hairpin="" bg="" bg_a="" bg_b="" side k
	ROUTER=0
	while (($#)); do
		case $1 in
		--name) lab=${2:?--name needs a value}; shift 2 ;;
		--name=*) lab=${1#*=}; shift ;;
		--router-b) ROUTER=1; shift ;;
		--loss) loss=${2:?--loss needs a value}; shift 2 ;;
		--loss=*) loss=${1#*=}; shift ;;
		--rate) rate=${2:?--rate needs a value}; shift 2 ;;
		--rate=*) rate=${1#*=}; shift ;;
		--udp-timeout) udp_timeout=${2:?--udp-timeout needs a value}; shift 2 ;;
		--udp-timeout=*) udp_timeout=${1#*=}; shift ;;
		--delay) delay=${2:?--delay needs a value}; shift 2 ;;
		--delay=*) delay=${1#*=}; shift ;;
		--delay-a) delay_a=${2:?--delay-a needs a value}; shift 2 ;;
		--delay-a=*) delay_a=${1#*=}; shift ;;
		--delay-b) delay_b=${2:?--delay-b needs a value}; shift 2 ;;
		--delay-b=*) delay_b=${1#*=}; shift ;;
		--reorder) REORDER=1; shift ;;
		--default-route) DEFAULT_ROUTE=1; shift ;;
		--hairpin)
			# The side is optional: no kind is named a, b or both.
			case ${2:-} in
			a | b | both) hairpin=$2; shift 2 ;;
			*) hairpin=present; shift ;;
			esac
			;;
		--hairpin=*) hairpin=${1#*=}; shift ;;
		--background-flows) bg=${2:?--background-flows needs a value}; shift 2 ;;
		--background-flows=*) bg=${1#*=}; shift ;;
		--background-flows-a) bg_a=${2:?--background-flows-a needs a value}; shift 2 ;;
		--background-flows-a=*) bg_a=${1#*=}; shift ;;
		--background-flows-b) bg_b=${2:?--background-flows-b needs a value}; shift 2 ;;
		--background-flows-b=*) bg_b=${1#*=}; shift ;;
		--portmap) PORTMAP=${2:?--portmap needs a value}; shift 2 ;;
		--portmap=*) PORTMAP=${1#*=}; shift ;;
		--ipv6) IPV6=1; shift ;;
		--nat66) IPV6=1 NAT66=1; shift ;;
		-*) usage_error "up: unknown option '$1'" ;;
		*) kinds+=("$1"); shift ;;
		esac
	done
	valid_lab "$lab"
	((${#kinds[@]} >= 1 && ${#kinds[@]} <= 2)) || usage_error "up: need KIND_A [KIND_B]"
	valid_kind "${kinds[0]}"
	if ((${#kinds[@]} == 2)); then valid_kind "${kinds[1]}"; fi
	if ((ROUTER == 1)) && { ((${#kinds[@]} < 2)) || [[ ${kinds[1]} == none ]]; }; then
		usage_error "--router-b needs a NAT kind other than 'none' on side B"
	fi
	if ! [[ $loss =~ ^[0-9]{1,3}$ ]] || ((10#$loss > 100)); then
		usage_error "--loss must be an integer 0-100"
	fi
	loss=$((10#$loss))
	if [[ -n $rate ]]; then
		if ! [[ $rate =~ ^[0-9]{1,6}$ ]] || ((10#$rate < 1 || 10#$rate > 100000)); then
			usage_error "--rate must be an integer 1-100000 (Mbit/s)"
		fi
		RATE=$((10#$rate))
	fi
	if [[ -n $udp_timeout ]]; then
		if ! [[ $udp_timeout =~ ^[0-9]{1,7}$ ]] || ((10#$udp_timeout < 1)); then
			usage_error "--udp-timeout must be a positive integer (seconds)"
		fi
		udp_timeout=$((10#$udp_timeout))
	fi
	DELAY_A=$(parse_delay --delay-a "${delay_a:-$delay}") || exit 2
	DELAY_B=$(parse_delay --delay-b "${delay_b:-$delay}") || exit 2
	# Any element at all: the tools it needs, and checksums completed before it.
	DELAY=$DELAY_A$DELAY_B
	if [[ -z $DELAY ]] && ((REORDER == 1)); then
		usage_error "--reorder needs --delay"
	fi
	case $hairpin in
	"") ;;
	a) HAIRPIN_A=1 ;;
	b) HAIRPIN_B=1 ;;
	both) HAIRPIN_A=1 HAIRPIN_B=1 ;;
	present) HAIRPIN_A=1 HAIRPIN_B=$((${#kinds[@]} == 2 ? 1 : 0)) ;;
	*) usage_error "--hairpin takes a, b or both, not '$hairpin'" ;;
	esac
	for side in a b; do
		[[ $side == a ]] && k=${kinds[0]} || k=${kinds[1]:-}
		if [[ $side == a ]] && ((HAIRPIN_A == 0)); then continue; fi
		if [[ $side == b ]] && ((HAIRPIN_B == 0)); then continue; fi
		[[ -n $k ]] || usage_error "--hairpin $hairpin: the lab has no side B"
		if [[ $k == none ]] || is_cgn "$k"; then
			usage_error "--hairpin: kind '$k' (side ${side^^}) cannot hairpin: none has no NAT, and a cgn-* kind's public address is its CGN's, a second NAT away; name the side(s) with --hairpin a|b"
		fi
	done
	for k in bg bg_a bg_b; do
		if [[ -n ${!k} ]] && { ! [[ ${!k} =~ ^[0-9]{1,4}$ ]] || ((10#${!k} < 1 || 10#${!k} > 1000)); }; then
			usage_error "--background-flows${k#bg}: RATE must be an integer 1-1000 (new flows per second)"
		fi
	done
	k=${kinds[1]:+${bg:-0}}
	BG_RATE_A=$((10#${bg_a:-${bg:-0}})) BG_RATE_B=$((10#${bg_b:-${k:-0}}))
	if ((BG_RATE_B > 0 && ${#kinds[@]} < 2)); then
		usage_error "--background-flows-b: the lab has no side B"
	fi
	[[ $PORTMAP =~ ^(none|(upnp|natpmp|pcp|wandown)(,(upnp|natpmp|pcp|wandown))*)$ ]] ||
		usage_error "--portmap takes none or a comma-separated list of upnp, natpmp, pcp, wandown, not '$PORTMAP'"
	[[ $PORTMAP != none ]] || PORTMAP=""
	for k in "${kinds[@]}"; do
		if is_upnp "$k"; then NEED_UPNPD=1; fi
	done
	if ((ROUTER == 1)) && is_upnp "${kinds[1]}"; then
		usage_error "--router-b: not with an upnp-* kind on side B"
	fi
	if ((ROUTER == 1 && IPV6 == 1)); then
		usage_error "--ipv6: not with --router-b"
	fi
	for k in "${kinds[@]}"; do
		if ((NAT66 == 1)) && is_cgn "$k"; then usage_error "--nat66: not with kind '$k'"; fi
	done
	need_tools

	local existing
	existing=$(lab_namespaces "$lab" | tr '\n' ' ')
	[[ -z $existing ]] || {
		echo "$PROG: lab '$lab' already exists (namespaces: ${existing% }); run '$PROG down --name $lab' first" >&2
		exit 3
	}

	UP_LAB=$lab
	trap up_cleanup EXIT
	trap 'exit 130' INT TERM HUP

	new_ns "$lab-srv"
	new_ns "$lab-wan"
	ip -n "$lab-wan" link add br0 type bridge
	ip -n "$lab-wan" link set br0 up
	ip -n "$lab-wan" link add srv type veth peer name eth0 netns "$lab-srv"
	ip -n "$lab-wan" link set srv master br0 up
	ip -n "$lab-srv" addr add "$SRV1/$WAN_PREFIX" dev eth0
	ip -n "$lab-srv" addr add "$SRV2/$WAN_PREFIX" dev eth0
	ip -n "$lab-srv" link set eth0 up
	tx_csum_off "$lab-srv" eth0
	if ((IPV6 == 1)); then
		enable_v6 "$lab-srv"
		ip -n "$lab-srv" addr add "$SRV1_V6/$WAN6_PREFIX" dev eth0 nodad
		ip -n "$lab-srv" addr add "$SRV2_V6/$WAN6_PREFIX" dev eth0 nodad
	fi

	if ((BG_RATE_A + BG_RATE_B > 0)); then
		# The background flows' discard address: dropped on arrival, so that
		# no ICMP port-unreachable goes back through the NATs.
		ip -n "$lab-srv" addr add "$SRV_BG/$WAN_PREFIX" dev eth0
		printf 'table ip natlab { chain input { type filter hook input priority filter; policy accept; ip daddr %s drop; }; }\n' \
			"$SRV_BG" | nsx "$lab-srv" nft -f -
	fi

	build_side "$lab" a "${kinds[0]}" "$loss" "$udp_timeout" "$HAIRPIN_A" "$BG_RATE_A"
	if ((${#kinds[@]} == 2)); then
		build_side "$lab" b "${kinds[1]}" "$loss" "$udp_timeout" "$HAIRPIN_B" "$BG_RATE_B"
	fi
	# Routes to public LANs only once both sides exist.
	if [[ ${kinds[0]} == none ]]; then route_public_side "$lab" a b; fi
	if ((IPV6 == 1)); then
		route_v6_side "$lab" a b "${kinds[0]}"
		if ((${#kinds[@]} == 2)); then route_v6_side "$lab" b a "${kinds[1]}"; fi
	fi
	write_hosts "$lab" "$lab-a"
	if ((${#kinds[@]} == 2)); then write_hosts "$lab" "$lab-b"; fi
	if ((${#kinds[@]} == 2)) && [[ ${kinds[1]} == none ]]; then route_public_side "$lab" b a; fi
	if is_upnp "${kinds[0]}"; then
		route_portmap_side "$lab" a b
		side_vars a "${kinds[0]}"
		start_upnpd "$lab" a
	fi
	if ((${#kinds[@]} == 2)) && is_upnp "${kinds[1]}"; then
		route_portmap_side "$lab" b a
		side_vars b "${kinds[1]}"
		start_upnpd "$lab" b
	fi
	# The generators last: every route they need exists.
	if ((BG_RATE_A > 0)); then
		side_vars a "${kinds[0]}"
		start_bgflows "$lab-bga" "$S_BG" "$BG_RATE_A"
	fi
	if ((BG_RATE_B > 0)); then
		side_vars b "${kinds[1]}"
		start_bgflows "$lab-bgb" "$S_BG" "$BG_RATE_B"
	fi

	pin_wan_neighbours "$lab"

	UP_DONE=1
	trap - EXIT INT TERM HUP
}

# Resolve every WAN neighbour once and pin it (nud permanent) in every namespace
# on the WAN side.  On the internet a NAT's next hop is resolved long before a
# punch; in the lab the NATs and the server share one L2 segment, and with
# --delay the first packet toward a new neighbour would wait for an ARP round
# trip through the delay elements (two one-way delays) -- a cost of the lab,
# not of the path, that would show up in every first exchange.  A one-byte UDP
# datagram to the discard port triggers the resolution (no ping here); the
# entry is then pinned with the link-layer address that answered, which is
# also right behind proxy ARP (--router-b).  With --ipv6 the same for the
# IPv6 WAN (2001:db8::/64) and neighbour discovery, within each family.
pin_wan_neighbours() {
	local lab=$1 ns line dev ip wan=() n
	for ns in $(lab_namespaces "$lab"); do
		while read -r line; do
			dev=${line%% *}
			ip=${line#* }
			wan+=("$ns $dev $ip")
		done < <(ip -n "$ns" -o addr show | awk '$4 ~ /^(203\.0\.113|11\.0\.113)\.|^2001:db8::[0-9a-f]+\/64$/ { sub(/\/.*/, "", $4); print $2, $4 }')
	done
	local entry target tns tdev tip
	for entry in "${wan[@]}"; do
		read -r ns dev ip <<<"$entry"
		for target in "${wan[@]}"; do
			read -r tns tdev tip <<<"$target"
			[[ $tns == "$ns" ]] && continue
			same_family "$ip" "$tip" || continue
			nsx "$ns" bash -c "echo x > /dev/udp/$tip/9" 2>/dev/null || true
		done
	done
	for entry in "${wan[@]}"; do
		read -r ns dev ip <<<"$entry"
		for target in "${wan[@]}"; do
			read -r tns tdev tip <<<"$target"
			[[ $tns == "$ns" ]] && continue
			same_family "$ip" "$tip" || continue
			# Only where this namespace sends toward it (a router has two WAN sides).
			[[ $(ip -n "$ns" -o route get "$tip" 2>/dev/null) == *" dev $dev "* ]] || continue
			# Up to ~3 s for the answer to come back through the delay elements.
			for n in $(seq 1 60); do
				line=$(ip -n "$ns" neigh show to "$tip" dev "$dev" | awk '/lladdr/ { for (i = 1; i < NF; i++) if ($i == "lladdr") print $(i + 1) }')
				[[ -n $line ]] && break
				sleep 0.05
			done
			[[ -n $line ]] && ip -n "$ns" neigh replace "$tip" lladdr "$line" dev "$dev" nud permanent
		done
	done
	return 0
}

# same_family IP1 IP2: both IPv4 or both IPv6.
same_family() {
	[[ $1 == *:* && $2 == *:* ]] || [[ $1 != *:* && $2 != *:* ]]
}

# ---- down ----------------------------------------------------------------

# Kill processes still running inside namespace $1: they were started in the
# lab by us, and a namespace with processes in it would outlive "ip netns del".
kill_ns_pids() {
	local ns=$1 pids i
	ns_exists "$ns" || return 0
	pids=$(ip netns pids "$ns" 2>/dev/null | grep -vx "$$" || true)
	[[ -n $pids ]] || return 0
	# shellcheck disable=SC2086  # word splitting of the pid list is intended
	kill -TERM $pids 2>/dev/null || true
	for ((i = 0; i < 20; i++)); do
		pids=$(ip netns pids "$ns" 2>/dev/null | grep -vx "$$" || true)
		[[ -n $pids ]] || return 0
		sleep 0.05
	done
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
}

cmd_down() {
	local lab=$DEFAULT_LAB ns rc=0
	while (($#)); do
		case $1 in
		--name) lab=${2:?--name needs a value}; shift 2 ;;
		--name=*) lab=${1#*=}; shift ;;
		*) usage_error "down: unexpected argument '$1'" ;;
		esac
	done
	valid_lab "$lab"
	[[ $(id -u) -eq 0 ]] || die "must run as root"
	stop_helpers "$lab"
	for ns in $(lab_namespaces "$lab"); do
		kill_ns_pids "$ns"
		ip netns del "$ns" || rc=1
	done
	rm -f "$RUN_DIR/$lab"-nat[ab]-upnpd.{conf,pid,log}
	remove_hosts "$lab"
	return "$rc"
}

# ---- exec / info / list / kinds -----------------------------------------

node_ns() {
	local lab=$1 node=$2
	case $node in
	srv | a | b | wan | rtb | dla | dlb) echo "$lab-$node" ;;
	bg-a | bga) echo "$lab-bga" ;;
	bg-b | bgb) echo "$lab-bgb" ;;
	nat-a | nata) echo "$lab-nata" ;;
	nat-b | natb) echo "$lab-natb" ;;
	cgn-a | cgna) echo "$lab-cgna" ;;
	cgn-b | cgnb) echo "$lab-cgnb" ;;
	*) usage_error "unknown node '$node' (srv | a | b | nat-a | nat-b | wan | rtb | dla | dlb | cgn-a | cgn-b | bg-a | bg-b)" ;;
	esac
}

cmd_exec() {
	local lab=$DEFAULT_LAB node="" ns
	while (($#)); do
		case $1 in
		--name) lab=${2:?--name needs a value}; shift 2 ;;
		--name=*) lab=${1#*=}; shift ;;
		--) shift; break ;;
		-*) usage_error "exec: unknown option '$1'" ;;
		*)
			[[ -z $node ]] || usage_error "exec: expected '--' after NODE"
			node=$1
			shift
			;;
		esac
	done
	valid_lab "$lab"
	[[ -n $node ]] || usage_error "exec: missing NODE"
	(($#)) || usage_error "exec: missing command after '--'"
	ns=$(node_ns "$lab" "$node")
	ns_exists "$ns" || die "namespace '$ns' does not exist (is lab '$lab' up, with that side?)"
	exec ip netns exec "$ns" "$@"
}

# read_alias NS: prints "kind=... loss=... udp_timeout=..." of a NAT namespace.
read_alias() {
	local a
	a=$(nsx "$1" cat /sys/class/net/wan0/ifalias)
	echo "${a#natlab }"
}

cmd_info() {
	local delays=()
	local lab=$DEFAULT_LAB side kv kind loss="" rate=0 udp_timeout="" delay=none reorder=0 default_route=0 upper hairpin bg_flows any_bg=0 portmap ipv6=0
	while (($#)); do
		case $1 in
		--name) lab=${2:?--name needs a value}; shift 2 ;;
		--name=*) lab=${1#*=}; shift ;;
		*) usage_error "info: unexpected argument '$1'" ;;
		esac
	done
	valid_lab "$lab"
	ns_exists "$lab-nata" || die "lab '$lab' is not up"
	echo "LAB=$lab"
	echo "SRV1=$SRV1"
	echo "SRV2=$SRV2"
	echo "SRV_NAME=$SRV_NAME"
	for side in a b; do
		ns_exists "$lab-nat$side" || continue
		kind="" loss="" udp_timeout="" hairpin=0 bg_flows=0 portmap=none ipv6=0
		for kv in $(read_alias "$lab-nat$side"); do
			case $kv in
			kind=*) kind=${kv#kind=} ;;
			loss=*) loss=${kv#loss=} ;;
			rate=*) rate=${kv#rate=} ;;
			udp_timeout=*) udp_timeout=${kv#udp_timeout=} ;;
			delay=*) delay=${kv#delay=} ;;
			reorder=*) reorder=${kv#reorder=} ;;
			default_route=*) default_route=${kv#default_route=} ;;
			hairpin=*) hairpin=${kv#hairpin=} ;;
			bg_flows=*) bg_flows=${kv#bg_flows=} ;;
			portmap=*) portmap=${kv#portmap=} ;;
			ipv6=*) ipv6=${kv#ipv6=} ;;
			nat66=*) NAT66=${kv#nat66=} ;;
			esac
		done
		side_vars "$side" "$kind"
		upper=${side^^}
		# This side's element: "none" or MS/JITTER (--delay-a, --delay-b, --delay).
		echo "DELAY_$upper=$delay"
		delays+=("$delay")
		echo "KIND_$upper=$kind"
		echo "NAT_$upper=$S_WAN"
		echo "$upper=$S_HOST"
		echo "${upper}_GW=$S_GW"
		echo "${upper}_NET=$S_NET"
		if is_cgn "$kind"; then
			# The double NAT: the CGN's inside, the home NAT's WAN, the block.
			echo "CGN_$upper=$S_CGN_IN"
			echo "HOME_$upper=$S_HOME_WAN"
			echo "BLOCK_$upper=$S_BLOCK_LO-$((S_BLOCK_LO + BLOCK_SIZE - 1))"
		fi
		# --hairpin (0|1) and --background-flows* (new flows per second, 0:
		# none); with background flows also BG_A, the other subscribers' address.
		echo "HAIRPIN_$upper=$hairpin"
		echo "BG_FLOWS_$upper=$bg_flows"
		# What the side's router maps ports with (upnp,natpmp,pcp), or none.
		echo "PORTMAP_$upper=$portmap"
		if ((bg_flows > 0)); then
			echo "BG_$upper=$S_BG"
			any_bg=1
		fi
		if ((ipv6 == 1)); then
			echo "NAT_${upper}_V6=$S_WAN6"
			echo "${upper}_V6=$S_HOST6"
			echo "${upper}_GW_V6=$S_GW6"
			echo "${upper}_NET_V6=$S_NET6"
		fi
	done
	# 1 with --ipv6; then also the server's IPv6 addresses.
	echo "IPV6=$ipv6"
	if ((ipv6 == 1)); then
		echo "SRV1_V6=$SRV1_V6"
		echo "SRV2_V6=$SRV2_V6"
	fi
	if ((any_bg == 1)); then echo "SRV_BG=$SRV_BG"; fi
	echo "LOSS=$loss"
	# --rate in Mbit/s, 0 without a shaper.
	echo "RATE=$rate"
	echo "UDP_TIMEOUT=$udp_timeout"
	# "none", or MS/JITTER of --delay (one way, each direction); "mixed" when the
	# sides differ (DELAY_A, DELAY_B).
	if ((${#delays[@]} == 2)) && [[ ${delays[0]} != "${delays[1]}" ]]; then
		echo "DELAY=mixed"
	else
		echo "DELAY=$delay"
	fi
	echo "REORDER=$reorder"
	echo "DEFAULT_ROUTE=$default_route"
}

cmd_list() {
	ip netns list 2>/dev/null | awk '{print $1}' |
		sed -nE 's/^([a-z][a-z0-9]{0,9})-(srv|wan|dla|cgna|nata|a|bga|rtb|dlb|cgnb|natb|b|bgb)$/\1/p' | sort -u
}

cmd_kinds() {
	local i
	for ((i = 0; i < ${#KINDS[@]}; i += 2)); do
		printf '%-22s %s\n' "${KINDS[i]}" "${KINDS[i + 1]}"
	done
}

main() {
	(($#)) || { usage >&2; exit 2; }
	local cmd=$1
	shift
	case $cmd in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	exec) cmd_exec "$@" ;;
	info) cmd_info "$@" ;;
	list) cmd_list "$@" ;;
	kinds) cmd_kinds "$@" ;;
	-h | --help | help) usage ;;
	*) usage_error "unknown command '$cmd'" ;;
	esac
}

main "$@"
