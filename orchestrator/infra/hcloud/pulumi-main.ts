import * as pulumi from '@pulumi/pulumi';
import { programFor } from './stack-programs';

/**
 * The entry point `Pulumi.yaml` names, for ops' `pulumi preview` / `pulumi up -s <stack>`: the
 * same programs the workers run inline through the Automation API, chosen by stack name.
 * Pulumi's Node.js runtime calls an exported function and turns its result into stack outputs.
 */
export = (): Promise<object> => programFor(pulumi.getStack())();
