"""Security groups as EC2 applies them, on by default: ingress and egress rules of every network interface,
stateful, between instances of one subnet too, with the traffic AWS never filters left alone; and the off
switch, which the lab announces."""
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from bake_lab.launcher import parse_args
from conftest import PAGE_USER_DATA, USER_DATA_WAIT, http_get, launch, runner_group, subnet_id, wait_for, wait_state

PROBE_TIMEOUT = 2  # what an instance waits for a TCP handshake: the lab answers in milliseconds or drops

# A probe server on port 80, needing no network to start (user data comes from IMDS, which is never filtered):
# GET /tcp/<ip>/<port> tries a TCP connection from the instance and answers open, refused or timeout (dropped);
# GET /imds answers the instance id read from IMDSv2, or unreachable.
PROBE_USER_DATA = r"""#!/bin/bash
set -eu
cat >/usr/local/sbin/probe <<'SH'
#!/bin/bash
read -r _ path _
while IFS= read -r line && [ -n "${line%$'\r'}" ]; do :; done
case "$path" in
  /tcp/*)
    IFS=/ read -r _ _ host port <<<"$path"
    if timeout PROBE_TIMEOUT bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then body=open
    elif [ $? -eq 124 ]; then body=timeout
    else body=refused; fi ;;
  /imds)
    token=$(curl -s -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
    body=$(curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" \
           http://169.254.169.254/latest/meta-data/instance-id) || body=unreachable ;;
  *) body=unknown ;;
esac
printf 'HTTP/1.0 200 OK\r\nContent-Length: %s\r\n\r\n%s' "${#body}" "$body"
SH
chmod +x /usr/local/sbin/probe
printf '[Socket]\nListenStream=80\nAccept=yes\n[Install]\nWantedBy=sockets.target\n' >/etc/systemd/system/probe.socket
printf '[Service]\nExecStart=/usr/local/sbin/probe\nStandardInput=socket\nStandardOutput=socket\n' \
  >/etc/systemd/system/probe@.service
systemctl daemon-reload
systemctl enable --now probe.socket
""".replace("PROBE_TIMEOUT", str(PROBE_TIMEOUT))


@pytest.fixture
def enforcement_restored(lab):
    yield
    lab.post("/_lab/security-groups", {"enforce": True})


def vpc_lab(ec2) -> str:
    return ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["VPC-Lab"]}])["Vpcs"][0]["VpcId"]


def unique(name: str) -> str:
    return f"{name}-{time.time_ns()}"


def tcp(port: int, **peer) -> list[dict]:
    return [{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **peer}]


ALL_OUT = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]


@contextmanager
def listeners(address: str, count: int):
    """TCP servers on the runner's lab address (ephemeral ports) that accept and close; yields their ports."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((address, 0))
        s.listen(16)
        s.settimeout(0.2)
        socks.append(s)
    stop = threading.Event()

    def serve(s):
        while not stop.is_set():
            try:
                s.accept()[0].close()
            except OSError:
                pass
    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    try:
        yield [s.getsockname()[1] for s in socks]
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        for s in socks:
            s.close()


@contextmanager
def router_addresses(lab, addresses: list[str]):
    """Put these addresses on the router's loopback for a test (those not there yet), so that a probe to them
    is answered by the router's kernel: `refused` when the packet arrived, `timeout` when it was dropped."""
    ns, added = lab.info["router_ns"], []
    try:
        for address in addresses:
            if subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", "lo"],
                              capture_output=True).returncode == 0:
                added.append(address)
        yield
    finally:
        for address in added:
            subprocess.run(["ip", "-n", ns, "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)


def probe(public_ip: str, path: str) -> str | None:
    got = http_get(f"http://{public_ip}{path}", timeout=PROBE_TIMEOUT + 3)
    return got[1] if got and got[0] == 200 else None


def probe_ready(ec2, iid: str) -> str:
    """Wait for the instance to run and its probe server to answer; returns its public IP."""
    ip = wait_state(ec2, iid, "running")["PublicIpAddress"]
    wait_for(f"{iid}'s probe server", lambda: probe(ip, "/imds") is not None, USER_DATA_WAIT, 0.5)
    return ip


def terminate(ec2, *iids: str) -> None:
    ec2.terminate_instances(InstanceIds=list(iids))
    for iid in iids:
        wait_state(ec2, iid, "terminated")


def test_enforcement_is_on_by_default_and_new_groups_allow_all_outbound(lab, ec2):
    assert lab.get_json("/_lab/security-groups") == {"enforce": True}
    assert lab.get_json("/_lab/info")["security_groups_enforced"] is True
    group = ec2.describe_security_groups(GroupIds=[runner_group(lab, ec2, unique("defaults"))])["SecurityGroups"][0]
    egress = [(p["IpProtocol"], p["IpRanges"]) for p in group["IpPermissionsEgress"]]
    assert egress == [("-1", [{"CidrIp": "0.0.0.0/0"}])]
    default = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_lab(ec2)]},
                                                    {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]
    assert [(p["IpProtocol"], [g["GroupId"] for g in p["UserIdGroupPairs"]]) for p in default["IpPermissions"]] == \
        [("-1", [default["GroupId"]])], "a VPC's default group admits its own members"


def test_egress_rules_decide_what_leaves_and_answers_always_come_back(lab, ec2, debian_ami):
    runner = lab.request("/_lab/checkip").strip()
    sg = runner_group(lab, ec2, unique("egress"))
    ec2.revoke_security_group_egress(GroupId=sg, IpPermissions=ALL_OUT)
    iid = launch(ec2, debian_ami, UserData=PROBE_USER_DATA, SecurityGroupIds=[sg], profile=False)
    try:
        # No outbound rule at all, yet the runner's requests (admitted inbound) are answered: stateful.
        ip = probe_ready(ec2, iid)
        # Instance metadata is never filtered, nor the Amazon DNS server (VPC base + 2 and 169.254.169.253),
        # Time Sync and the VPC router; another address on the same router is.
        assert probe(ip, "/imds") == iid
        exempt = ["10.0.0.2", "169.254.169.253", "169.254.169.123", "10.0.10.1"]
        with router_addresses(lab, [*exempt, "10.0.0.9"]):
            assert {a: probe(ip, f"/tcp/{a}/9") for a in exempt} == {a: "refused" for a in exempt}
            assert probe(ip, "/tcp/10.0.0.9/9") == "timeout"
        with listeners(runner, 2) as (allowed, other):
            assert probe(ip, f"/tcp/{runner}/{allowed}") == "timeout"
            # The apt proxy stands in for a mirror on the internet: closed without an outbound rule for it.
            assert probe(ip, "/tcp/169.254.169.254/3142") == "timeout"

            ec2.authorize_security_group_egress(GroupId=sg, IpPermissions=tcp(allowed, IpRanges=[
                {"CidrIp": f"{runner}/32"}]))
            # The runner's answer comes back though no inbound rule admits it: the connection is tracked.
            assert probe(ip, f"/tcp/{runner}/{allowed}") == "open"
            assert probe(ip, f"/tcp/{runner}/{other}") == "timeout"

            ec2.authorize_security_group_egress(GroupId=sg, IpPermissions=ALL_OUT)
            assert probe(ip, f"/tcp/{runner}/{other}") == "open"
            assert probe(ip, "/tcp/169.254.169.254/3142") == "open"
    finally:
        terminate(ec2, iid)


def test_instances_of_one_subnet_meet_only_as_their_groups_allow(lab, ec2, debian_ami):
    vpc = vpc_lab(ec2)
    sg_a, sg_b = runner_group(lab, ec2, unique("peer-a")), runner_group(lab, ec2, unique("peer-b"))
    a = launch(ec2, debian_ami, UserData=PROBE_USER_DATA, SecurityGroupIds=[sg_a], profile=False)
    b = launch(ec2, debian_ami, UserData=PROBE_USER_DATA, SecurityGroupIds=[sg_b], profile=False)
    default = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                    {"Name": "group-name", "Values": ["default"]}])
    default = default["SecurityGroups"][0]["GroupId"]
    c = launch(ec2, debian_ami, UserData=PROBE_USER_DATA, SecurityGroupIds=[default], profile=False)
    try:
        ip_a, ip_b = probe_ready(ec2, a), probe_ready(ec2, b)
        wait_state(ec2, c, "running")
        found = ec2.describe_instances(InstanceIds=[a, b, c])["Reservations"]
        private = {i["InstanceId"]: i["PrivateIpAddress"] for r in found for i in r["Instances"]}
        assert {i["SubnetId"] for r in found for i in r["Instances"]} == {subnet_id(ec2, "Public subnet A")}

        # One subnet, one bridge: still, B's group admits only the runner.
        assert probe(ip_a, f"/tcp/{private[b]}/80") == "timeout"

        # A rule naming A's group lets A in, and only A.
        from_a = tcp(80, UserIdGroupPairs=[{"GroupId": sg_a}])
        ec2.authorize_security_group_ingress(GroupId=sg_b, IpPermissions=from_a)
        assert probe(ip_a, f"/tcp/{private[b]}/80") == "open"
        assert probe(ip_b, f"/tcp/{private[a]}/80") == "timeout", "A's group does not admit B"

        # A CIDR rule does the same; the sender's egress rules apply as well.
        ec2.revoke_security_group_ingress(GroupId=sg_b, IpPermissions=from_a)
        assert probe(ip_a, f"/tcp/{private[b]}/80") == "timeout"
        ec2.authorize_security_group_ingress(GroupId=sg_b, IpPermissions=tcp(80, IpRanges=[
            {"CidrIp": f"{private[a]}/32"}]))
        assert probe(ip_a, f"/tcp/{private[b]}/80") == "open"
        ec2.revoke_security_group_egress(GroupId=sg_a, IpPermissions=ALL_OUT)
        assert probe(ip_a, f"/tcp/{private[b]}/80") == "timeout"
        ec2.authorize_security_group_egress(GroupId=sg_a, IpPermissions=ALL_OUT)

        # C is in the VPC's default group only, which admits its members: A gets in once A is one.
        assert probe(ip_a, f"/tcp/{private[c]}/80") == "timeout"
        ec2.modify_instance_attribute(InstanceId=a, Groups=[sg_a, default])
        assert probe(ip_a, f"/tcp/{private[c]}/80") == "open"
        # The same change through the interface (ModifyNetworkInterfaceAttribute) takes A out again.
        eni_a = [i for r in found for i in r["Instances"] if i["InstanceId"] == a][0]["NetworkInterfaces"][0]
        ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_a["NetworkInterfaceId"], Groups=[sg_a])
        assert [g["GroupId"] for g in ec2.describe_instances(InstanceIds=[a])["Reservations"][0]["Instances"][0]
                ["SecurityGroups"]] == [sg_a]
        assert probe(ip_a, f"/tcp/{private[c]}/80") == "timeout"
    finally:
        terminate(ec2, a, b, c)


def test_ingress_rules_open_and_close_the_port(lab, ec2, debian_ami, enforcement_restored):
    sg = runner_group(lab, ec2, unique("web-sg"))
    mine = tcp(80, IpRanges=[{"CidrIp": lab.request("/_lab/checkip").strip() + "/32"}])
    iid = launch(ec2, debian_ami, UserData=PROBE_USER_DATA, SecurityGroupIds=[sg], profile=False)
    try:
        ip = probe_ready(ec2, iid)
        ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=mine)
        assert http_get(f"http://{ip}/imds", timeout=1) is None
        ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=mine)
        assert http_get(f"http://{ip}/imds") == (200, iid)
        ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=mine)
        assert http_get(f"http://{ip}/imds", timeout=1) is None
        lab.post("/_lab/security-groups", {"enforce": False})
        assert http_get(f"http://{ip}/imds") == (200, iid)
    finally:
        terminate(ec2, iid)


def target_state(elb, tg: str, iid: str) -> dict | None:
    for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]:
        if d["Target"]["Id"] == iid:
            return d["TargetHealth"]
    return None


def test_only_the_balancers_group_reaches_the_instance_and_only_allowed_clients_the_balancer(lab, ec2, debian_ami):
    elb = lab.client("elbv2")
    vpc = vpc_lab(ec2)
    app_sg = ec2.create_security_group(GroupName=unique("app-sg"), Description="app", VpcId=vpc)["GroupId"]
    alb_sg = runner_group(lab, ec2, unique("alb-sg"))
    mine = tcp(80, IpRanges=[{"CidrIp": lab.request("/_lab/checkip").strip() + "/32"}])
    iid = launch(ec2, debian_ami, UserData=PAGE_USER_DATA.format(page="app"), SecurityGroupIds=[app_sg])
    tg = elb.create_target_group(Name="sg-tg", Protocol="HTTP", Port=80, VpcId=vpc, HealthCheckPath="/",
                                 HealthyThresholdCount=2, UnhealthyThresholdCount=2)
    tg = tg["TargetGroups"][0]["TargetGroupArn"]
    lb = elb.create_load_balancer(Name="sg-alb", SecurityGroups=[alb_sg],
                                  Subnets=[subnet_id(ec2, "Public subnet A"),
                                           subnet_id(ec2, "Public subnet C")])["LoadBalancers"][0]
    try:
        elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
        ip = wait_state(ec2, iid, "running")["PublicIpAddress"]
        elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": iid, "Port": 80}])
        url = f"http://{lb['DNSName']}/"

        # The app's group admits nothing: the balancer's checks time out, as on AWS.
        state = wait_for("the target unhealthy", lambda: (t := target_state(elb, tg, iid)) and
                         t["State"] == "unhealthy" and t, 60)
        assert state["Reason"] == "Target.Timeout", state
        assert http_get(url)[0] == 503

        # A rule naming the balancer's group lets its checks and its traffic in, and nobody else's.
        from_alb = tcp(80, UserIdGroupPairs=[{"GroupId": alb_sg}])
        ec2.authorize_security_group_ingress(GroupId=app_sg, IpPermissions=from_alb)
        wait_for("the target healthy", lambda: target_state(elb, tg, iid)["State"] == "healthy", 60)
        assert http_get(url) == (200, f"app {iid}\n")
        assert http_get(f"http://{ip}/", timeout=1) is None, "the runner is not in the balancer's group"

        # The balancer's own outbound rules apply too: without them its checks time out again.
        ec2.revoke_security_group_egress(GroupId=alb_sg, IpPermissions=ALL_OUT)
        state = wait_for("the target unhealthy", lambda: (t := target_state(elb, tg, iid)) and
                         t["State"] == "unhealthy" and t, 60)
        assert state["Reason"] == "Target.Timeout", state
        ec2.authorize_security_group_egress(GroupId=alb_sg, IpPermissions=tcp(80, UserIdGroupPairs=[
            {"GroupId": app_sg}]))
        wait_for("the target healthy", lambda: target_state(elb, tg, iid)["State"] == "healthy", 60)

        # Without the runner's rule the balancer itself is closed to it.
        ec2.revoke_security_group_ingress(GroupId=alb_sg, IpPermissions=mine)
        assert http_get(url, timeout=1) is None
    finally:
        elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
        terminate(ec2, iid)
        elb.delete_target_group(TargetGroupArn=tg)


def test_turning_enforcement_off_is_announced(lab, enforcement_restored):
    since = time.time()
    assert lab.post("/_lab/security-groups", {"enforce": False}) == {"enforce": False}
    assert lab.get_json("/_lab/info")["security_groups_enforced"] is False
    lab.post("/_lab/security-groups", {"enforce": True})
    marks = [(e["event"], e["by"]) for e in lab.get_lines("/_lab/events")
             if e["event"].startswith("security_groups") and e["time"] >= since]
    assert marks == [("security_groups_not_enforced", "api"), ("security_groups_enforced", "api")]


def test_launcher_flags_enforce_by_default_and_accept_the_old_flag():
    assert parse_args([]).enforce_security_groups is True
    assert parse_args(["--enforce-security-groups"]).enforce_security_groups is True
    assert parse_args(["--no-enforce-security-groups"]).enforce_security_groups is False


def test_a_lab_started_without_enforcement_says_so(lab):
    from bake_lab.client import LabProcess
    other = LabProcess(["--no-enforce-security-groups"])
    try:
        assert other.get_json("/_lab/security-groups") == {"enforce": False}
        marks = [e for e in other.get_lines("/_lab/events") if e["event"].startswith("security_groups")]
        assert [(e["event"], e["by"]) for e in marks] == [("security_groups_not_enforced", "launcher")]
    finally:
        assert other.stop() == 0
