-- Argo CD health check for inputbot's InputBot, Pipeline and ActionBinding (inputbot.dev).
-- The three kinds share one status shape, written by the operator
-- (operator/src/controller/mod.rs):
--   status.observedGeneration   the metadata.generation the status describes
--   status.conditions[]         Ready, ReferencesResolved, TopicsReady, WorkloadReady and,
--                               with autoscaling, AutoscalingReady; each with a reason
-- Healthy:     Ready=True for the current generation.
-- Progressing: no status yet, a status of an older generation, being deleted, or Ready=False
--              while topics or Deployments come up (TopicsNotReady, WorkloadNotReady).
-- Degraded:    Ready=False for any other reason — the spec is invalid (InvalidSpec), a
--              reference is missing (ReferenceNotFound), the API server refused a child
--              (KubernetesApiError): the operator waits for a change of the spec.
-- Written for Argo CD's Lua (5.1); docs/install.md has the argocd-cm snippet, and
-- operator/tests/argocd_health.rs runs this file against sample statuses.
local hs = {}

local function condition(status, type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or "NoReason"
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local progressing = { TopicsNotReady = true, WorkloadNotReady = true }

local generation = obj.metadata.generation
local status = obj.status

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted"
  return hs
end

if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the inputbot operator to report a status"
  return hs
end

if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (status is of generation " .. tostring(status.observedGeneration or "none") .. ")"
  return hs
end

local ready = condition(status, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  local autoscaling = condition(status, "AutoscalingReady")
  if autoscaling ~= nil and autoscaling.status == "False" then
    hs.message = hs.message .. "; AutoscalingReady " .. describe(autoscaling)
  end
  return hs
end

if ready.status == "False" and not progressing[ready.reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = describe(ready)
return hs
