"""Least-privilege checks on the IAM policies of a CloudFormation template
(the SAM-translated one, so generated roles are seen too):

- every action exists (cfn-lint's copy of the IAM service authorization
  reference), so a made-up action such as dynamodb:TransactWriteItems fails;
- no wildcard in an allowed action;
- "*" as a resource only for actions that have no resource-level
  permissions (ALLOWED_STAR);
- every policy that works on job state (DynamoDB actions on the state
  table) allows each operation the DynamoDB store calls, as read from its
  source, so a new call cannot ship without its permission;
- a role that uses only part of the store (SCOPED_ROLES: the API) is held
  to exactly what its code reaches: the store methods its sources call,
  followed through the DynamoDB store's source to the operations they
  send. Missing actions fail, and so do granted ones it never uses.
- every Lambda role may put job events on the bus (events:PutEvents): any
  function may end a job, and the one that does announces it;
- each processor type (shared/src/processor/<type>.rs) is granted exactly
  the actions its source calls, in statements named Processor<Type>...
  that exist only when a parameter names their resources (a condition),
  on those parameters' values and nothing else (PROCESSOR_GRANTS); the
  worker role has them all, and the roles of the functions that may end a
  job (orchestrator, sweeper) those of types that finish jobs (s3).

Usage: python scripts/check-iam.py target/sam/template.json
"""

import json
import os
import re
import sys

import cfnlint

ALLOWED_STAR = {"xray:puttracesegments", "xray:puttelemetryrecords"}


def known_actions():
    path = os.path.join(
        os.path.dirname(cfnlint.__file__), "data", "AdditionalSpecs", "Policies.json"
    )
    with open(path, encoding="utf-8") as f:
        services = json.load(f)
    return {
        f"{prefix}:{action}".lower()
        for prefix, service in services.items()
        for action in service.get("Actions", {})
    }


STORE_SOURCES = os.path.join(os.path.dirname(__file__), "..", "shared", "src", "store", "dynamodb")
# SDK operation -> IAM action. TransactWriteItems has no action of its own:
# its items are authorized as PutItem / UpdateItem / DeleteItem /
# ConditionCheckItem, found from the item builders (`Delete::builder()`).
SDK_TO_IAM = {
    "get_item": "dynamodb:GetItem",
    "put_item": "dynamodb:PutItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "batch_get_item": "dynamodb:BatchGetItem",
    "batch_write_item": "dynamodb:BatchWriteItem",
    "query": "dynamodb:Query",
    "transact_write_items": None,
    "condition_check_item": "dynamodb:ConditionCheckItem",
}
TRANSACT_ITEMS = {
    "Put": "put_item",
    "Update": "update_item",
    "Delete": "delete_item",
    "ConditionCheck": "condition_check_item",
}


def operations(code):
    """SDK operations a piece of the store's source sends: client calls and
    the kinds of item its transactions hold."""
    ops = re.findall(r"\.client\s*\.(\w+)\(\)", code)
    ops += [TRANSACT_ITEMS[k] for k in re.findall(r"\b(Put|Update|Delete|ConditionCheck)::builder\(\)", code)]
    return ops


def store_actions():
    """IAM actions for the SDK operations the DynamoDB store calls."""
    actions = set()
    for name in sorted(os.listdir(STORE_SOURCES)):
        if not name.endswith(".rs"):
            continue
        with open(os.path.join(STORE_SOURCES, name), encoding="utf-8") as f:
            code = f.read()
        for op in operations(code):
            if op not in SDK_TO_IAM:
                sys.exit(f"check-iam: {name} calls {op}: add it to SDK_TO_IAM")
            if SDK_TO_IAM[op]:
                actions.add(SDK_TO_IAM[op])
    return actions


ROOT = os.path.join(os.path.dirname(__file__), "..")
# Role -> the sources whose store calls are all it makes (directories are
# read whole, tests aside).
SCOPED_ROLES = {
    "ApiRole": [
        "shared/src/api",
        "shared/src/finalize.rs",
        "shared/src/report.rs",
        "shared/src/steer.rs",
    ],
}


def store_call_graph():
    """For each function name in the DynamoDB store: the SDK operations it
    sends itself and the `self.` methods it calls."""
    graph = {}
    for name in sorted(os.listdir(STORE_SOURCES)):
        if not name.endswith(".rs"):
            continue
        with open(os.path.join(STORE_SOURCES, name), encoding="utf-8") as f:
            code = f.read()
        starts = [(m.start(), m.group(1)) for m in re.finditer(r"\bfn\s+(\w+)", code)]
        for i, (start, fn) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(code)
            body = code[start:end]
            ops, calls = graph.setdefault(fn, (set(), set()))
            ops.update(operations(body))
            calls.update(re.findall(r"\bself\s*\.\s*(\w+)\s*\(", body))
    return graph


def store_methods():
    """The methods of the store traits (shared/src/store/mod.rs)."""
    with open(os.path.join(ROOT, "shared", "src", "store", "mod.rs"), encoding="utf-8") as f:
        return set(re.findall(r"\basync fn (\w+)", f.read()))


def scoped_actions(sources):
    """IAM actions on the state table that the store calls in `sources` need."""
    methods = store_methods()
    called = set()
    for source in sources:
        path = os.path.join(ROOT, source)
        files = (
            [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".rs") and n != "tests.rs"]
            if os.path.isdir(path)
            else [path]
        )
        for file in files:
            with open(file, encoding="utf-8") as f:
                code = f.read()
            # A module's inline tests drive the whole store; they are not
            # the role's code.
            code = code.split("#[cfg(test)]\nmod tests {")[0]
            called.update(m for m in re.findall(r"\.\s*(\w+)\s*\(", code) if m in methods)
    graph = store_call_graph()
    seen, todo, ops = set(), list(called), set()
    while todo:
        fn = todo.pop()
        if fn in seen or fn not in graph:
            continue
        seen.add(fn)
        fn_ops, fn_calls = graph[fn]
        ops |= fn_ops
        todo.extend(fn_calls)
    actions = set()
    for op in ops:
        if op not in SDK_TO_IAM:
            sys.exit(f"check-iam: the store calls {op}: add it to SDK_TO_IAM")
        if SDK_TO_IAM[op]:
            actions.add(SDK_TO_IAM[op])
    return sorted(called), actions


def on_state_table(statement):
    return {"Fn::GetAtt": ["StateTable", "Arn"]} in list(resources_of(statement))


def as_list(value):
    return value if isinstance(value, list) else [value]


def statements(document):
    """Statements, with both branches of any Fn::If."""
    for s in as_list(document.get("Statement", [])):
        if isinstance(s, dict) and "Fn::If" in s:
            for branch in s["Fn::If"][1:]:
                if isinstance(branch, dict) and "Ref" not in branch:
                    yield branch
        elif isinstance(s, dict):
            yield s


def resources_of(statement):
    for r in as_list(statement.get("Resource", [])):
        if isinstance(r, dict) and "Fn::If" in r:
            yield from (b for b in r["Fn::If"][1:] if b != {"Ref": "AWS::NoValue"})
        else:
            yield r


def documents(template):
    for name, resource in template.get("Resources", {}).items():
        props = resource.get("Properties", {})
        kind = resource.get("Type")
        if kind == "AWS::IAM::Role":
            for p in props.get("Policies", []):
                yield f"{name}/{p.get('PolicyName')}", p["PolicyDocument"]
        elif kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            yield name, props["PolicyDocument"]


def is_lambda_role(resource):
    doc = resource.get("Properties", {}).get("AssumeRolePolicyDocument", {})
    return any(
        s.get("Principal", {}).get("Service") == "lambda.amazonaws.com"
        for s in as_list(doc.get("Statement", []))
        if isinstance(s, dict)
    )


def role_actions(template, resource):
    """Actions a role's inline and (template-defined) managed policies allow."""
    resources = template.get("Resources", {})
    props = resource.get("Properties", {})
    docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
    for arn in as_list(props.get("ManagedPolicyArns", [])):
        refs = arn["Fn::If"][1:] if isinstance(arn, dict) and "Fn::If" in arn else [arn]
        for ref in refs:
            name = ref.get("Ref") if isinstance(ref, dict) else None
            if name in resources and "PolicyDocument" in resources[name].get("Properties", {}):
                docs.append(resources[name]["Properties"]["PolicyDocument"])
    return {
        a.lower()
        for d in docs
        for s in statements(d)
        if s.get("Effect") == "Allow"
        for a in as_list(s.get("Action", []))
        if isinstance(a, str)
    }


PROCESSOR_SOURCES = os.path.join(ROOT, "shared", "src", "processor")
# Processor type -> IAM action -> the parameters naming its resources
# (besides resources of the stack itself, PROCESSOR_STACK_RESOURCES).
PROCESSOR_GRANTS = {
    "dynamodb": {"dynamodb:PutItem": {"UpsertTableArns"}},
    "relationships": {
        "dynamodb:BatchWriteItem": {"EdgeTableArns"},
        "dynamodb:BatchGetItem": {"ThingsTableArns"},
    },
    "embeddings": {
        "bedrock:InvokeModel": {"EmbeddingModelArns"},
        "dynamodb:UpdateItem": {"EmbeddingTableArns"},
    },
    "lambda": {"lambda:InvokeFunction": {"ProcessorFunctionArns"}},
    "s3": {"s3:PutObject": {"OutputBucket", "OutputPrefix"}, "s3:ListBucket": {"OutputBucket"}},
}
# The embeddings processor stores vectors in the stack's target table when
# its definition names no table.
PROCESSOR_STACK_RESOURCES = {("embeddings", "dynamodb:UpdateItem"): {"TargetTable"}}
# Types whose finish_job runs when a job ends, in any function that ends one.
FINISHING_TYPES = {"s3"}
PROCESSOR_CALLS = {
    "put_item": "dynamodb:PutItem",
    "batch_write_item": "dynamodb:BatchWriteItem",
    "batch_get_item": "dynamodb:BatchGetItem",
    "update_item": "dynamodb:UpdateItem",
    "invoke_model": "bedrock:InvokeModel",
    "delete_item": "dynamodb:DeleteItem",
    "invoke": "lambda:InvokeFunction",
    "put_object": "s3:PutObject",
    "list_objects_v2": "s3:ListBucket",
}


def processor_calls():
    """Processor type -> the IAM actions its source's SDK calls need."""
    calls = {}
    for name in sorted(os.listdir(PROCESSOR_SOURCES)):
        kind = name[:-3]
        if not name.endswith(".rs") or kind in ("mod", "registry", "cost"):
            continue
        with open(os.path.join(PROCESSOR_SOURCES, name), encoding="utf-8") as f:
            code = f.read().split("#[cfg(test)]")[0]
        if f'name: "{kind}"' not in code:
            sys.exit(f"check-iam: {name} registers no processor type {kind!r}")
        calls[kind] = {PROCESSOR_CALLS[m] for m in re.findall(r"\.\s*(\w+)\(\)", code) if m in PROCESSOR_CALLS}
    return calls


def referenced(value):
    """Names a resource value refers to: Ref, Fn::GetAtt, ${...} in Fn::Sub."""
    found = set()
    if isinstance(value, dict):
        if "Ref" in value:
            found.add(value["Ref"])
        if "Fn::GetAtt" in value:
            found.add(value["Fn::GetAtt"][0])
        if "Fn::Sub" in value:
            text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
            found |= {n for n in re.findall(r"\$\{([\w:]+)", text) if not n.startswith("AWS::")}
        for key, inner in value.items():
            if key not in ("Ref", "Fn::GetAtt", "Fn::Sub"):
                found |= referenced(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= referenced(inner)
    return found


def processor_statements(template, role):
    """(type, sid, statement, condition) of a role's Processor* statements;
    condition is the condition they exist under (None: unconditional)."""
    resources = template.get("Resources", {})
    props = resources[role].get("Properties", {})
    found = []

    def add(statement, condition):
        sid = statement.get("Sid", "")
        if not sid.startswith("Processor"):
            return
        kind = next((k for k in sorted(PROCESSOR_GRANTS, key=len, reverse=True)
                     if sid[len("Processor"):].lower().startswith(k)), None)
        found.append((kind, sid, statement, condition))

    for policy in props.get("Policies", []):
        for s in as_list(policy["PolicyDocument"].get("Statement", [])):
            if isinstance(s, dict) and "Fn::If" in s:
                condition, branch, other = s["Fn::If"]
                if isinstance(branch, dict) and "Ref" not in branch:
                    add(branch, condition)
                if isinstance(other, dict) and "Ref" not in other:
                    add(other, "not " + condition)
            elif isinstance(s, dict):
                add(s, None)
    for arn in as_list(props.get("ManagedPolicyArns", [])):
        refs = arn["Fn::If"][1:] if isinstance(arn, dict) and "Fn::If" in arn else [arn]
        for ref in refs:
            name = ref.get("Ref") if isinstance(ref, dict) else None
            policy = resources.get(name or "", {})
            if "PolicyDocument" in policy.get("Properties", {}):
                for s in statements(policy["Properties"]["PolicyDocument"]):
                    add(s, policy.get("Condition"))
    return found


def check_processors(template):
    problems, summary = [], []
    calls = processor_calls()
    for kind in sorted(set(calls) | set(PROCESSOR_GRANTS)):
        if calls.get(kind, set()) != set(PROCESSOR_GRANTS.get(kind, {})):
            problems.append(
                f"processor {kind}: its source calls {sorted(calls.get(kind, set()))}, "
                f"PROCESSOR_GRANTS grants {sorted(PROCESSOR_GRANTS.get(kind, {}))}"
            )
    roles = {"WorkerRole": set(PROCESSOR_GRANTS), "OrchestratorRole": FINISHING_TYPES, "SweeperRole": FINISHING_TYPES}
    for role, kinds in roles.items():
        if role not in template.get("Resources", {}):
            problems.append(f"{role}: no such role in the template")
            continue
        granted = {}
        for kind, sid, statement, condition in processor_statements(template, role):
            if kind is None:
                problems.append(f"{role}/{sid}: names no processor type")
                continue
            if condition is None:
                problems.append(f"{role}/{sid}: granted whether or not a parameter names its resources")
            for action in as_list(statement.get("Action", [])):
                allowed = PROCESSOR_GRANTS[kind].get(action)
                if allowed is None:
                    problems.append(f"{role}/{sid}: the {kind} processor never calls {action}")
                    continue
                names = referenced(statement.get("Resource"))
                extra = names - allowed - PROCESSOR_STACK_RESOURCES.get((kind, action), set())
                if extra or not names & allowed:
                    problems.append(f"{role}/{sid}: {action} on {sorted(names)}, not on what {sorted(allowed)} name")
                granted.setdefault(kind, set()).add(action)
        for kind in sorted(kinds):
            for action in sorted(set(PROCESSOR_GRANTS[kind]) - granted.get(kind, set())):
                problems.append(f"{role}: the {kind} processor calls {action}, which no Processor statement grants")
        summary.append(f"{role}: {', '.join(f'{k} ({len(v)})' for k, v in sorted(granted.items()))}")
    return problems, summary


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        template = json.load(f)
    known = known_actions()
    needed = store_actions()
    problems = []
    checked = 0
    scoped = {}
    granted = {}
    for where, document in documents(template):
        state = {
            a
            for s in statements(document)
            if s.get("Effect") == "Allow" and on_state_table(s)
            for a in as_list(s.get("Action", []))
            if isinstance(a, str)
        }
        role = where.split("/")[0]
        if role in SCOPED_ROLES:
            # Checked over all the role's policies together, below.
            granted.setdefault(role, set()).update(state)
        elif len(state) > 1:
            for action in sorted(needed - state):
                problems.append(f"{where}: the DynamoDB store calls {action}, not allowed on the state table")
        for s in statements(document):
            if s.get("Effect") != "Allow":
                continue
            actions = [a for a in as_list(s.get("Action", [])) if isinstance(a, str)]
            for action in actions:
                checked += 1
                if "*" in action:
                    problems.append(f"{where}: wildcard action {action}")
                elif action.lower() not in known:
                    problems.append(f"{where}: {action} is not an IAM action")
            if "*" in list(resources_of(s)):
                for action in actions:
                    if action.lower() not in ALLOWED_STAR:
                        problems.append(f"{where}: {action} on resource *")
    for role, sources in SCOPED_ROLES.items():
        if role not in granted:
            problems.append(f"{role}: no such role in the template")
            continue
        methods, reached = scoped[role] = scoped_actions(sources)
        for action in sorted(reached - granted[role]):
            problems.append(f"{role}: its code calls {action} (through {', '.join(methods)}), not allowed on the state table")
        for action in sorted(granted[role] - reached):
            problems.append(f"{role}: {action} on the state table is allowed but its code never calls it")
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::IAM::Role" and is_lambda_role(resource):
            if "events:putevents" not in role_actions(template, resource):
                problems.append(f"{name}: may end a job but cannot put its event (events:PutEvents)")
    processor_problems, processor_summary = check_processors(template)
    problems += processor_problems
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"IAM: processor permissions, each under its parameter: {'; '.join(processor_summary)}", file=sys.stderr)
    for role, (methods, reached) in sorted(scoped.items()):
        print(f"IAM: {role} allows exactly {', '.join(sorted(reached))} on the state table (store calls: {', '.join(methods)})", file=sys.stderr)
    print(f"IAM: {checked} allowed actions checked, none unknown, wildcard or on * needlessly", file=sys.stderr)


if __name__ == "__main__":
    main()
