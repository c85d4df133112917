"""JUnit XML for CI: one testcase per policy rule, one per auditor (the common JUnit schema)."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from trustlab.audit.pipeline import GateResult
from trustlab.audit.policy import RuleResult
from trustlab.train.checkpoint import atomic_write_bytes


def junit_xml(gate: GateResult) -> str:
    """The JUnit XML document of a gate: suites ``policy`` (rules) and ``auditors``."""
    report = gate.report
    root = ET.Element("testsuites", name=f"trustlab audit {report.subject['name']}")
    properties = {"run_id": report.run_id, "tier": report.provenance.get("tier"),
                  "seed": report.provenance.get("seed"),
                  "subject_hash": report.provenance.get("subject_hash"),
                  "baseline": gate.baseline}
    policy = _suite(root, "trustlab.policy", report.created, properties)
    for rule in gate.rules:
        case = ET.SubElement(policy, "testcase", name=rule.name,
                             classname=f"trustlab.policy.{(rule.metric or 'rule').split('.')[0]}",
                             time="0")
        _outcome(case, rule)
    auditors = _suite(root, "trustlab.auditors", report.created, properties)
    for result in report.results:
        case = ET.SubElement(auditors, "testcase", name=result.auditor,
                             classname="trustlab.auditors", time=f"{result.duration_s:.3f}")
        if result.status == "errored":
            ET.SubElement(case, "error", message=_first_line(result.error or "errored"),
                          type="AuditorError").text = result.error
        elif result.auditor in gate.cached:
            ET.SubElement(case, "system-out").text = "result reused from the store's cache"
    for suite in (policy, auditors):
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        for tag, attribute in (("failure", "failures"), ("error", "errors"),
                               ("skipped", "skipped")):
            suite.set(attribute, str(sum(c.find(tag) is not None for c in cases)))
        suite.set("time", f"{sum(float(c.get('time', 0)) for c in cases):.3f}")
    for attribute in ("tests", "failures", "errors"):
        root.set(attribute, str(sum(int(s.get(attribute, 0)) for s in (policy, auditors))))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(gate: GateResult, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, junit_xml(gate).encode())
    return path


def _suite(root: ET.Element, name: str, timestamp: str, properties: dict) -> ET.Element:
    suite = ET.SubElement(root, "testsuite", name=name, tests="0",
                          timestamp=timestamp.removesuffix("Z"), hostname=socket.gethostname())
    holder = ET.SubElement(suite, "properties")
    for key, value in properties.items():
        if value is not None:
            ET.SubElement(holder, "property", name=key, value=str(value))
    return suite


def _outcome(case: ET.Element, rule: RuleResult) -> None:
    details = "\n".join(f"{k}: {v}" for k, v in (
        ("rule", rule.rule), ("metric", rule.metric), ("measured", rule.measured),
        ("bound", rule.bound), ("ci", list(rule.ci) if rule.ci else None),
        ("message", rule.message)) if v is not None)
    if rule.status == "failed":
        ET.SubElement(case, "failure", message=_describe(rule),
                      type="PolicyViolation").text = details
    elif rule.status == "errored":
        ET.SubElement(case, "error", message=rule.message, type="RuleError").text = details
    elif rule.status == "skipped":
        ET.SubElement(case, "skipped", message=rule.message)
    else:
        ET.SubElement(case, "system-out").text = details


def _describe(rule: RuleResult) -> str:
    ci = f", 95% CI [{rule.ci[0]:.4g}, {rule.ci[1]:.4g}]" if rule.ci and None not in rule.ci \
        else ""
    return f"measured {rule.measured:.6g}, bound {rule.bound:.6g}{ci}: {rule.message}"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text
