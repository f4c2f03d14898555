"""Prepares a moto server for previewd: a wildcard ACM certificate and a public hosted zone for the DNS
zone, and the default VPC's subnets. Prints what it made as JSON on one line.

usage: python moto_seed.py ENDPOINT ZONE [ZONE ...]
"""
import json
import sys

import boto3


def main() -> None:
    endpoint, zones = sys.argv[1], sys.argv[2:]
    kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    ec2 = boto3.client("ec2", **kw)
    acm = boto3.client("acm", **kw)
    r53 = boto3.client("route53", **kw)
    vpc = next(v for v in ec2.describe_vpcs()["Vpcs"] if v.get("IsDefault"))["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]][:2]
    out = {"vpc_id": vpc, "subnet_ids": subnets, "zones": {}}
    for zone in zones:
        cert = acm.request_certificate(DomainName=f"*.{zone}", ValidationMethod="DNS")["CertificateArn"]
        hz = r53.create_hosted_zone(Name=zone, CallerReference=f"previewd-{zone}")["HostedZone"]["Id"]
        out["zones"][zone] = {"certificate_arn": cert, "hosted_zone_id": hz.split("/")[-1]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
