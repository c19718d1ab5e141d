"""The seam: every use of a name Airflow does not make public, in one place.

Airflow's "Public Interface" page (Airflow 3.0+) lists what follows semantic versioning: the
Task SDK (``airflow.sdk``), triggers, plugins, hooks and providers, exceptions, the auth
manager's interface, and a few utility classes; "everything not mentioned ... should be
considered as non-Public Interface", the metadata DB's structure included. airflow-hitl needs a
few such names: each is imported only in a module of this package, behind a small function
with our own name and types, and ``ruff`` (TID251, ``[tool.ruff.lint.flake8-tidy-imports]``
in pyproject.toml) refuses their modules anywhere else in ``airflow_hitl/``. When an Airflow
release changes one, its contract test in ``tests/seam/test_contracts.py`` fails (the unit
lane runs them on Airflow 3.3, ``scripts/test-airflow-versions.sh`` on 3.1 and 3.2), and the
fix is here.

Internal names relied on
========================

One entry per Airflow module imported here (``tests/seam/test_contracts.py`` checks that this
list and the imports agree): the names used; what they are; why no public interface serves;
the Airflow version since which we rely on it (the package supports 3.1, 3.2 and 3.3); the
contract test.

``airflow.models.taskinstance``
    Names: ``TaskInstance`` (its table ``task_instance``: ``dag_id``, ``run_id``, ``task_id``,
    ``map_index``, ``state``, ``try_number``, ``id``, ``trigger_id``; plain SQL and a ``FOR UPDATE
    SKIP LOCKED`` select; for a gate parked in ``awaiting_input`` also ``next_method``,
    ``next_kwargs`` and ``trigger_timeout``, read in one select over the ``ti_state`` index and
    updated conditionally, and ``updated_at``, which Airflow writes on every change of a row: the
    parked tasks' fingerprint, one aggregate row). Module: :mod:`.task_instances`.
    What: the ORM model of a task instance in the metadata DB. A parked task keeps what it
    parked with on the row (``next_kwargs``: our request id) and its deadline in
    ``trigger_timeout``, which the scheduler's ``check_awaiting_input_timeouts`` sweeps: past it,
    a parked task with no ``hitl_detail`` row is resumed on a worker with a timeout event.
    ``id`` is the task instance try's (new for every try, as ``ti.id`` on the worker, the Task
    SDK's public ``RuntimeTaskInstanceProtocol.id``): a request records the one that opened it.
    Why: the gate closer ends a deferred or parked task from the api-server at once, and moves a
    parked gate's deadline after an escalation; the pass over parked gates cancels a waiting
    request whose task instance try is over or is another one; no REST route or SDK call ends
    such a task with an event or sets its deadline, and the DB is internal.
    Since: 3.1 (``awaiting_input`` and its sweep: 3.3). Contract: ``test_task_instance_columns_we_read_and_lock``,
    ``test_a_task_parks_in_awaiting_input_without_a_trigger``,
    ``test_the_sweep_resumes_a_parked_task_past_its_deadline_with_a_timeout_event``,
    ``test_trigger_timeout_is_the_parked_deadline``, ``test_tasks_parked_by_others_are_not_ours``,
    ``test_a_task_instance_has_a_new_id_for_every_try``; ``tests/seam/test_parked_fingerprint.py``
    (every change of a parked task, through Airflow's own calls, changes the fingerprint).
``airflow.models.dagrun``
    Names: ``DagRun`` (its table ``dag_run`` and its unique key ``dag_id``, ``run_id``; plain
    SQL, unlocked). Module: :mod:`.task_instances`.
    What: the ORM model of a DAG run in the metadata DB; deleting a run deletes its task
    instances (a foreign key, ``ON DELETE CASCADE``).
    Why: a waiting request whose task instance is gone is cancelled only when its DAG run is
    gone too (deleted in Airflow): the pass over parked gates asks which runs of many exist in
    one query; the REST API answers one run at a time, to a caller with a token, and the DB is
    internal. Since: 3.1. Contract: ``test_dag_run_key_we_read``.
``airflow.models.trigger``
    Names: ``Trigger`` (``classpath``, ``kwargs``), ``handle_event_submit(event, *,
    task_instance, session)``. Module: :mod:`.task_instances`.
    What: the trigger row a task is deferred on; the function the triggerer (and the API
    processes) call with a trigger's event to end or resume its task instance, deferred or
    parked in ``awaiting_input`` alike (it does not look at the state).
    Why: as above; it is the one way Airflow itself ends a deferred or parked task with an event.
    Since: 3.1. Contract: ``test_handle_event_submit_ends_a_deferred_task``,
    ``test_handle_event_submit_ends_a_parked_task``, ``test_handle_event_submit_signature``.
``airflow.utils.session``
    Names: ``create_session`` (commits when the block ends, rolls back when it raises; a
    ``RuntimeError`` where the process set up no session). Modules: :mod:`.task_instances`,
    :mod:`.dags`.
    What: a session of Airflow's metadata DB.
    Why: the metadata DB is internal; only Airflow's own sessions reach it with its
    configuration (pool, SQLite or PostgreSQL). Since: 3.1.
    Contract: ``test_create_session_commits_and_rolls_back``.
``airflow.sdk.execution_time.task_runner``
    Names: ``SUPERVISOR_COMMS`` (the running task's comms) and, through it,
    ``airflow.sdk.execution_time.supervisor.InProcessSupervisorComms`` (the comms of the
    in-process runner of ``airflow dags test``, looked up in ``sys.modules``, never imported).
    Module: :mod:`.parking`.
    What: which runner runs the task: a worker's supervisor, or ``dag.test()`` in one process.
    Why: ``dag.test()`` runs a deferred task's trigger inline but leaves a parked task waiting
    for an api-server to end it; a gate must defer there, and no public call says which runner
    this is. Since: 3.1 (asked from 3.3, where gates park).
    Contract: ``test_the_in_process_runner_of_dags_test_never_parks``.
``airflow.api_fastapi.app``
    Names: ``get_auth_manager()`` (raises where no auth manager was initialised).
    Module: :mod:`.auth`.
    What: the auth manager instance the api-server created.
    Why: ``BaseAuthManager`` is public, but not how to reach the running instance.
    Since: 3.1. Contract: ``test_get_auth_manager_returns_the_instance_or_raises``.
``airflow.api_fastapi.core_api.security``
    Names: ``get_user(request, oauth_token | _oauth_token, bearer_credentials)``.
    Module: :mod:`.auth`.
    What: Airflow's FastAPI dependency resolving a request's bearer token or UI cookie.
    Why: no public function turns a request into a user; re-implementing JWT checks would
    drift from Airflow's. Since: 3.1; its token parameter was renamed in 3.3
    (:func:`.auth.oauth_token_param`). Contract: ``test_get_user_resolves_a_real_token``,
    ``test_get_user_token_parameter``.
``airflow.models.dag``
    Names: ``DagModel.get_dag_id_to_team_name_mapping(dag_ids)`` (module :mod:`.auth`);
    ``DagModel.dag_id``, the primary key of its table ``dag`` (module :mod:`.dags`).
    What: the team owning each DAG, for ``DagDetails(team_name=...)`` and
    ``filter_authorized_dag_ids(team_name=...)``; whether a DAG of that id exists at all
    (``dag_exists``: a standing approval for an unknown DAG is a 422; in multi-team mode, a
    DAG with no team row is every reader's only if it exists, else it may have been any team's).
    Why: no public interface names a DAG's team; the public REST API tells whether a DAG
    exists only to a caller with a token and read access to it, and the DB is internal.
    Since: 3.2 for the teams (multi-team mode; never asked on 3.1, which has no teams), 3.1
    for ``dag_id``. Contract: ``test_dag_team_mapping``, ``test_dag_exists_reads_the_dag_table``.
``airflow.sdk.definitions._internal.contextmanager``
    Names: ``DagContext.get_current()`` (the DAG of the innermost open ``with DAG(...)`` block
    or ``@dag`` function, None outside one). Module: :mod:`.dags`.
    What: the context stack Airflow's operators join their DAG from.
    Why: a TaskFlow gate's options are checked when ``@task.approval`` is applied, before
    any operator exists; its parse-time error must name the DAG, and no public call says
    which DAG is being defined. Since: 3.1. Contract: ``test_dag_being_defined_names_the_open_dag``.
``airflow.stats``
    Names: ``Stats``. Module: :mod:`.stats`.
    What: the one metrics facade of Airflow 3.1.
    Why: Airflow exposes no public metrics client; sending through its ``Stats`` is how our
    metrics reach the user's ``[metrics]`` backend. Since: 3.1 (used on 3.1 only: 3.2 warns
    that the import moved). Contract: ``test_stats_client_counts_gauges_and_times``.
``airflow.sdk.observability.stats``
    Names: ``Stats``, its ``factory`` and ``initialize(factory=)``. Module: :mod:`.stats`.
    What: the same facade where Airflow 3.2 moved it (``airflow.stats`` re-exports it there
    with a deprecation warning). Why: as for ``airflow.stats``; not in ``airflow.sdk.__all__``.
    Since: 3.2 (used on 3.2). Contract: ``test_stats_client_counts_gauges_and_times``.
``airflow._shared.observability.metrics.stats``
    Names: the module (``incr``, ``gauge``, ``timing``) and its private ``_factory``.
    Module: :mod:`.stats`.
    What: the core's copy of ``Stats`` on Airflow 3.3, initialised by the api-server,
    scheduler and triggerer.
    Why: as for ``airflow.stats``; only ``_factory`` tells whether this process set it up.
    Since: 3.3. Contract: ``test_stats_copies_are_initialised_through_factory``.
``airflow.sdk._shared.observability.metrics.stats``
    Names: the module, ``initialize(factory=, export_legacy_names=)`` and ``_factory``.
    Module: :mod:`.stats`.
    What: the Task SDK's copy of ``Stats`` on Airflow 3.3 (task runner, trigger runner).
    Why: as above. Since: 3.3. Contract: ``test_stats_copies_are_initialised_through_factory``.
``airflow.sdk.observability.metrics.stats_utils``
    Names: ``get_stats_factory()``. Module: :mod:`.stats`.
    What: builds the StatsD / DogStatsD / OpenTelemetry logger ``[metrics]`` asks for
    (3.2: ``get_stats_factory(Stats)``, for ``Stats.initialize(factory=)``).
    Why: not in ``airflow.sdk.__all__``; the one way to set up ``Stats`` as Airflow does
    where Airflow did not. Since: 3.2. Contract: ``test_stats_copies_are_initialised_through_factory``.
``airflow.cli.cli_config``
    Names: ``GroupCommand``, ``ActionCommand``, ``Arg`` (subclassed: ``add_to_parser(parser)``
    is called with the parser of the command the argument belongs to; a hook then makes that
    parser report its own errors, as ``DefaultHelpParser``'s ``error`` prints the whole
    ``airflow`` help for an unknown argument). Module: :mod:`.cli`.
    What: the command objects a provider's ``get_provider_info()["cli"]`` returns.
    Why: the CLI is public as a command line, its Python classes are not listed, yet the
    provider ``cli`` entry needs them; no public hook reaches a command's parser. Since: 3.1
    (the provider entry from 3.2). Contract: ``test_cli_command_classes``,
    ``test_arg_reaches_the_parser_of_its_command``.
``airflow.cli.simple_table``
    Names: ``AirflowConsole`` (subclassed: ``print_as(data=, output=)``, ``print_as_table``,
    ``print``, ``show_header``; its width, 200 columns when not printing to a terminal) and
    ``SimpleTable`` (``add_column``, ``add_row``). Module: :mod:`.cli`.
    What: how Airflow's commands print ``--output table|json|yaml|plain``.
    Why: not listed public; our ``approvals list/show`` print as Airflow's commands do, with
    ids kept whole in tables. Since: 3.1. Contract: ``test_airflow_console_prints_json``,
    ``test_airflow_console_tables_keep_whole_columns``.
``airflow.providers_manager``
    Names: ``ProvidersManager().initialize_providers_configuration()``.
    Module: :mod:`.providers`.
    What: merges the providers' option declarations into Airflow's config.
    Why: on Airflow 3.1 a bare script must ask for it before ``[hitl]`` options are known
    as sensitive (``_CMD``/``_SECRET``); no public call does it. Since: 3.1.
    Contract: ``test_provider_configuration_declares_hitl_options``.

The pages: ``airflow_hitl/ui/static/airflow-theme.js``
    Names: ``localStorage`` keys ``theme`` (next-themes: ``light``, ``dark``, ``system``) and
    ``timezone`` (a JSON string); the ``light``/``dark`` class of the UI's ``<html>``; Chakra's
    CSS variables ``--chakra-colors-bg``, ``--chakra-colors-bg-panel``, ``--chakra-colors-fg``,
    ``--chakra-colors-fg-muted``, ``--chakra-colors-border``; the UI body's ``font-family``;
    ``window.frameElement`` and the UI's ``<body>``, where a modal's backdrop adds a dimming
    layer over Airflow's page while it is open (``window.AirflowBackdrop``).
    What: the Airflow UI's appearance and timezone, read by our pages in their iframe.
    Why: "Web UI ... there are no backwards compatibility guarantees on HTML elements"; no
    API tells a plugin's page the user's colour mode or timezone. Since: 3.1.
    Contract: ``tests/ui/test_airflow_look.py`` and ``tests/ui/test_page_fixes.py`` (the
    backdrop over Airflow's page) (real Airflow UI, Playwright; e2e lane) and
    ``test_airflow_theme_script_names_what_it_reads`` (the header lists every key read).

Private attributes of public classes
====================================

``SmtpHook._smtp_client`` (``apache-airflow-providers-smtp``)
    Module: :mod:`.smtp`. What: the logged-in ``smtplib.SMTP`` of an entered hook.
    Why: the hook's public ``send_email_smtp`` builds its own ``MIMEMultipart`` whose only
    body is HTML (no text alternative, a template file when there is no HTML, local-time
    ``Date``); ``get_conn()`` returns the hook itself, and no public method sends a message
    the caller built (the hook's own ``test_connection`` uses ``_smtp_client`` too). Since:
    provider 2.0 (every version Airflow 3.1 to 3.3 installs).
    Contract: ``test_smtp_hook_keeps_its_logged_in_client``,
    ``test_private_attributes_are_read_only_in_the_seam``.

Behaviour of public methods relied on
=====================================

``BaseOperator.resolve_template_files()`` called once the DAG is complete
    Where: :meth:`airflow_hitl.operators.approval.ApprovalOperator.resolve_template_files`
    (no import: an override). What: ``DagBag.bag_dag`` calls it on every task after the whole
    DAG is built and before keeping it, so an error raised there is the DAG's import error.
    Why: no public hook runs after a DAG is complete; ``distinct_from`` names gates that may be
    defined after this one. Where a DAG is built outside a DagBag, the gate checks when it runs.
    Since: 3.1. Contract: ``tests/operators/test_distinct_from.py``
    (``test_gates_named_before_or_after_mapped_or_branching_parse``,
    ``test_an_unknown_name_is_the_dags_import_error``).

Judged public, used outside the seam
====================================

Not banned; what we decided for each name that could be doubted:

``airflow.sdk``
    ``BaseOperator``, ``BaseHook``, ``Context``, ``conf``, ``TaskInstanceState`` (the Task
    SDK, the primary public interface). ``TaskInstanceState`` replaces
    ``airflow.utils.state.TaskInstanceState`` (the page lists ``airflow.utils.state`` under
    "Public Utility classes", but ``airflow.utils`` is otherwise internal and banned whole):
    ``airflow.sdk`` exports it on 3.1, 3.2 and 3.3 with the values Airflow stores
    (``test_sdk_task_instance_states_are_the_stored_values``).
``airflow.sdk.exceptions``, ``airflow.exceptions``, ``airflow.__version__``
    Public exceptions (``TaskAwaitingInput``, Airflow 3.3+, is raised only in :mod:`.parking`,
    behind ``can_park()`` and ``test_a_task_parks_in_awaiting_input_without_a_trigger``); the version string.
``airflow.triggers.base``
    ``BaseTrigger``, ``TriggerEvent``, ``TaskSuccessEvent``, ``TaskFailedEvent``,
    ``TaskSkippedEvent``: public triggers.
``airflow.plugins_manager``
    ``AirflowPlugin``: the public plugin mechanism.
``airflow.configuration``
    ``conf``: Airflow's configuration (the documented way a provider reads its options).
``airflow.api_fastapi.auth.managers``
    ``base_auth_manager.BaseAuthManager`` (``is_authorized_dag``,
    ``filter_authorized_dag_ids`` - one call for many DAGs; Airflow 3.1's takes no
    ``team_name``) and ``models.base_user`` / ``models.resource_details``: "the auth manager
    interface itself ... is public" (its implementations are not, and are never imported).
    Contract: ``test_filter_authorized_dag_ids_signature``.
``airflow.providers.*``
    ``SmtpHook``, ``SlackHook``, ``HttpHook``, ``common.compat.notifier.BaseNotifier``:
    providers' hooks and notifiers are public.
``airflow.sdk.bases.decorator``
    ``DecoratedOperator``, ``task_decorator_factory``, ``TaskDecorator``: how Airflow's
    "Creating Custom @task Decorators" how-to builds a provider's ``task-decorators``.
``airflow.sdk`` ``BaseNotifier``
    Exported by the Task SDK: the type ``notifiers=[...]`` accepts.
"""

from __future__ import annotations
