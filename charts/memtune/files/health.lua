-- Argo CD health check for memtune.dev/MemoryTuningJob.
-- Install: argocd-cm key `resource.customizations.health.memtune.dev_MemoryTuningJob` (docs/cluster.md).
-- A training run is a finite job, so Healthy means "Succeeded" (Argo CD sync waves wait on it),
-- Progressing covers Pending/Queued/Running and a status older than the spec, Degraded means Failed.

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function progress_message(status, fallback)
  local p = status.progress
  if p ~= nil and p.maxSteps ~= nil and p.maxSteps > 0 then
    return string.format("%s: step %d/%d", fallback, p.step or 0, p.maxSteps)
  end
  return fallback
end

local function assess(obj)
  local status = obj.status
  if status == nil then
    return "Progressing", "Waiting for the memtune operator to pick up the job"
  end

  -- The operator has not yet acted on the latest spec: whatever the status says is about an older one.
  local generation = obj.metadata.generation
  if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
    return "Progressing", string.format(
      "Waiting for the operator to observe generation %d (status is for generation %d)",
      generation, status.observedGeneration)
  end

  local failed = condition(status, "Failed")
  if status.phase == "Failed" or (failed ~= nil and failed.status == "True") then
    local message = "Training failed"
    if failed ~= nil and failed.message ~= nil and failed.message ~= "" then
      message = failed.message
    end
    return "Degraded", message
  end

  local ready = condition(status, "Ready")
  if status.phase == "Succeeded" or (ready ~= nil and ready.status == "True") then
    if status.artifactsUri ~= nil then
      return "Healthy", "Succeeded: artifacts in " .. status.artifactsUri
    end
    return "Healthy", "Succeeded"
  end

  if status.phase == "Suspended" or (obj.spec ~= nil and obj.spec.suspend == true) then
    return "Suspended", "Suspended (spec.suspend is true)"
  end

  if status.phase == "Running" then
    return "Progressing", progress_message(status, "Running")
  end
  if status.phase == "Queued" then
    return "Progressing", "Queued: waiting for capacity"
  end
  return "Progressing", status.phase or "Pending"
end

local hs = {}
hs.status, hs.message = assess(obj)
return hs
